"""
eval/analyze.py: the w_p transform, relative scores, the quadratic fit and its critical PLW, loss RSD, the CLI.

Expected values are derived independently of the code under test: w_p through the identity
PLW^log10(2) = 2^log10(PLW) (so PLW = 10^log2(w_p)), fits from coefficients we choose, scaled scores by hand.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from eval.analyze import (PAPER_PLWS, aggregate, analyze, fit_quadratic, infer_group, load_log, loss_rsd, main,
                          make_figures, markdown_table, plw_from_wp, relative_scores, wp)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "eval", "analyze.py")


def crit(vertex):
    """PLW for a w_p, via 2^log10(PLW) = w_p  <=>  PLW = 10^log2(w_p) (not the code's w^(1/log10 2))."""
    return 10 ** math.log2(vertex)


# -----------------------------------------------------------------------------
# w_p

def test_wp_on_paper_grid_and_inverse():
    for p in PAPER_PLWS:
        expected = 0.0 if p == 0 else 2 ** math.log10(p)
        assert wp(p) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert plw_from_wp(wp(p)) == pytest.approx(p, rel=1e-12, abs=1e-15)
    # decades of PLW are halvings of w_p
    assert (wp(0), wp(0.01), wp(0.1), wp(1)) == pytest.approx((0, 0.25, 0.5, 1), abs=1e-15)
    arr = wp(np.array(PAPER_PLWS))
    assert isinstance(arr, np.ndarray) and np.all(np.diff(arr) > 0)
    with pytest.raises(ValueError):
        wp(-0.1)
    with pytest.raises(ValueError):
        plw_from_wp(-0.1)


def test_paper_vertex_to_critical_plw():
    # the paper: vertex w_p = 0.652 -> critical PLW 0.242
    assert plw_from_wp(0.652) == pytest.approx(crit(0.652), rel=1e-12)
    assert round(plw_from_wp(0.652), 3) == 0.242


# -----------------------------------------------------------------------------
# the quadratic fit

@pytest.mark.parametrize("a,b,c,x", [
    (-2.0, 2.608, 0.3, [wp(p) for p in PAPER_PLWS]),             # vertex 2.608 / 4 = 0.652, the paper's
    (-0.5, 0.4, -1.0, [0.0, 0.1, 0.1, 0.3, 0.5, 0.9, 0.9, 1.0]),  # vertex 0.4, repeated x
])
def test_fit_recovers_exact_quadratic(a, b, c, x):
    x = np.array(x)
    fit = fit_quadratic(x, a * x**2 + b * x + c)
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((a, b, c), rel=1e-12, abs=1e-12)
    vertex = -b / (2 * a)
    assert fit["vertex_wp"] == pytest.approx(vertex, rel=1e-12)
    assert fit["critical_plw"] == pytest.approx(crit(vertex), rel=1e-11)
    assert fit["concave"] is True and fit["reason"] is None
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12) and fit["n"] == len(x)


def test_fit_flags_convex_outside_and_flat():
    x = np.array([wp(p) for p in PAPER_PLWS])
    convex = fit_quadratic(x, 1.5 * x**2 - 1.2 * x + 0.2)  # a minimum at 0.4
    assert convex["concave"] is False and convex["critical_plw"] is None
    assert convex["vertex_wp"] == pytest.approx(0.4) and "not concave" in convex["reason"]
    outside = fit_quadratic(x, -1.0 * x**2 + 2.6 * x)  # concave, vertex at 1.3 > 1
    assert outside["concave"] is True and outside["critical_plw"] is None
    assert outside["vertex_wp"] == pytest.approx(1.3) and "outside" in outside["reason"]
    flat = fit_quadratic(x, np.full_like(x, 0.7))
    assert flat["concave"] is False and flat["vertex_wp"] is None and flat["critical_plw"] is None


def test_fit_needs_three_plws():
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_quadratic([0.0, 0.5, 0.5, 0.0], [1.0, 2.0, 2.1, 0.9])


# -----------------------------------------------------------------------------
# relative scores and the aggregate

def test_infer_group():
    assert [infer_group(b) for b in ("arc_challenge", "piqa", "truthfulqa_mc2", "winogrande")] == ["mc"] * 4
    assert [infer_group(b) for b in ("memorization_bleu", "gen_length_tokens", "gen_length_words")] == ["gen"] * 3
    assert [infer_group(b) for b in ("weight_distance_l2_rel", "loss_rsd", "completion_loss_rsd")] == ["mechanism"] * 3
    assert infer_group("some_new_metric") == "gen"  # documented default


SMALL = [
    # A (mc, inferred): 0.2, 0.4, 0.3 -> relative 0, 1, 0.5
    {"plw": 0.0, "benchmark": "arc_challenge", "score": 0.2},
    {"plw": 0.1, "benchmark": "arc_challenge", "score": 0.9},  # overwritten by the re-run below
    {"plw": 1.0, "benchmark": "arc_challenge", "score": 0.3},
    # B (gen, lower is better): 10, 20, 40 -> scaled 0, 1/3, 1 -> inverted 1, 2/3, 0
    {"plw": 0.0, "benchmark": "memorization_bleu", "score": 10, "higher_is_better": False},
    {"plw": 0.1, "benchmark": "memorization_bleu", "score": 20, "higher_is_better": False},
    {"plw": 1.0, "benchmark": "memorization_bleu", "score": 40, "higher_is_better": False},
    # C (mc): the same everywhere -> no relative score, left out of the aggregate
    {"plw": 0.0, "benchmark": "piqa", "score": 0.5},
    {"plw": 0.1, "benchmark": "piqa", "score": 0.5},
    {"plw": 1.0, "benchmark": "piqa", "score": 0.5},
    # D (mechanism): never aggregated
    {"plw": 0.0, "benchmark": "weight_distance_l2_rel", "score": 9.0},
    {"plw": 0.1, "benchmark": "weight_distance_l2_rel", "score": 5.0},
    {"plw": 1.0, "benchmark": "weight_distance_l2_rel", "score": 1.0},
    {"plw": 0.1, "benchmark": "arc_challenge", "score": 0.4, "run": "rerun"},
]


def test_relative_scores_hand_checked():
    rel = {(r["benchmark"], r["plw"]): r["relative"] for r in relative_scores(SMALL)}
    assert rel == pytest.approx({
        ("arc_challenge", 0.0): 0.0, ("arc_challenge", 0.1): 1.0, ("arc_challenge", 1.0): 0.5,
        ("memorization_bleu", 0.0): 1.0, ("memorization_bleu", 0.1): 2 / 3, ("memorization_bleu", 1.0): 0.0,
        ("piqa", 0.0): None, ("piqa", 0.1): None, ("piqa", 1.0): None,
    })


def test_aggregate_hand_checked():
    def by_plw(agg):
        return [r["plw"] for r in agg], [r["relative"] for r in agg], [r["n"] for r in agg]
    # all: the mean of A and B (C has no relative score, D is a mechanism metric)
    assert by_plw(aggregate(SMALL)) == ([0.0, 0.1, 1.0], pytest.approx([1 / 2, 5 / 6, 1 / 4]), [2, 2, 2])
    assert by_plw(aggregate(SMALL, "mc")) == ([0.0, 0.1, 1.0], pytest.approx([0, 1, 1 / 2]), [1, 1, 1])
    assert by_plw(aggregate(SMALL, "gen")) == ([0.0, 0.1, 1.0], pytest.approx([1, 2 / 3, 0]), [1, 1, 1])
    assert {r["dataset"] for r in aggregate(SMALL)} == {"default"}
    with pytest.raises(ValueError):
        aggregate(SMALL, "mechanism")

    res = analyze(SMALL)["datasets"]["default"]
    assert res["excluded"] == ["piqa"]
    assert res["table"][1]["scores"]["arc_challenge"] == 0.4  # the last row won
    md = markdown_table(analyze(SMALL))
    assert "| PLW | w_p |" in md and "piqa" in md


def test_inconsistent_group_is_refused():
    rows = [{"plw": p, "benchmark": "x", "score": p, "group": "mc"} for p in (0, 0.1, 1)]
    rows[1]["group"] = "gen"
    with pytest.raises(ValueError, match="disagree"):
        aggregate(rows)


# -----------------------------------------------------------------------------
# loss RSD

def log(values, key="loss", start=1, step=1):
    return [{"iter": start + i * step, key: v} for i, v in enumerate(values)]


def test_loss_rsd_hand_checked():
    # windows [1..5]: mean 3, population std sqrt(2) -> sqrt(2)/3; [2]*5 -> 0; the trailing 7 is a partial window
    assert loss_rsd(log([1, 2, 3, 4, 5, 2, 2, 2, 2, 2, 7])) == pytest.approx(math.sqrt(2) / 6, rel=1e-12)
    # window 2: [1, 3] -> std 1 / mean 2; [2, 2] -> 0
    assert loss_rsd(log([1, 3, 2, 2], "completion_loss"), key="completion_loss", window=2) == pytest.approx(0.25)


def test_loss_rsd_matches_numpy():
    v = np.random.default_rng(0).uniform(1.0, 3.0, size=23)
    rows = log(v, "prompt_loss", start=0)
    w = v[:20].reshape(4, 5)
    assert loss_rsd(rows, key="prompt_loss") == pytest.approx(np.mean(np.std(w, axis=1) / np.mean(w, axis=1)))


def test_loss_rsd_requires_consecutive_iters():
    with pytest.raises(ValueError, match="log_interval=10"):
        loss_rsd(log(range(1, 21), step=10))
    rows = log(range(1, 11))
    del rows[4]
    with pytest.raises(ValueError, match="not consecutive"):
        loss_rsd(rows)
    with pytest.raises(ValueError, match="at least 5"):
        loss_rsd(log([1, 2, 3]))
    # a resumed run re-logs iters 4..5: the later rows win, leaving [1, 2, 3, 4, 5]
    resumed = log([1, 2, 3, 99, 99]) + log([4, 5], start=4)
    assert loss_rsd(resumed) == pytest.approx(math.sqrt(2) / 3)


# -----------------------------------------------------------------------------
# the command line

def quad(w):
    return -2.0 * w * w + 2.608 * w + 0.3  # vertex 0.652


def sweep_rows():
    """Two datasets: 'short' with benchmarks that are increasing affine maps of quad (so the relative aggregate
    is one too and keeps its vertex, 0.652), 'long' with a convex curve."""
    rows = []
    for p in PAPER_PLWS:
        w = 2 ** math.log10(p) if p else 0.0
        rows += [
            {"dataset": "short", "plw": p, "benchmark": "arc_challenge", "score": 0.3 + 0.1 * quad(w)},
            {"dataset": "short", "plw": p, "benchmark": "memorization_bleu", "score": 30 - 4 * quad(w),
             "higher_is_better": False},
            {"dataset": "short", "plw": p, "benchmark": "winogrande", "score": 0.5},
            {"dataset": "short", "plw": p, "benchmark": "weight_distance_l2_rel", "score": 1 - w},
            {"dataset": "long", "plw": p, "benchmark": "piqa", "score": 0.6 + 0.1 * (w - 0.5) ** 2},
        ]
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_json_end_to_end(tmp_path):
    scores = write_jsonl(tmp_path / "scores.jsonl", sweep_rows())
    p = subprocess.run([sys.executable, SCRIPT, "--scores", scores, "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    short, long = out["datasets"]["short"], out["datasets"]["long"]
    assert short["fit"]["vertex_wp"] == pytest.approx(0.652, rel=1e-10)
    assert short["fit"]["critical_plw"] == pytest.approx(crit(0.652), rel=1e-9)
    assert short["fit"]["concave"] is True and short["excluded"] == ["winogrande"]
    rel = [e["relative"] for e in short["table"]]
    assert min(rel) == pytest.approx(0) and max(rel) == pytest.approx(1)
    assert [e["plw"] for e in short["table"]] == sorted(PAPER_PLWS)
    assert long["fit"]["concave"] is False and long["fit"]["critical_plw"] is None and long["fit"]["reason"]


def test_cli_markdown_out_and_log(tmp_path, capsys):
    scores = write_jsonl(tmp_path / "scores.jsonl", sweep_rows())
    logf = write_jsonl(tmp_path / "log.jsonl", [{"iter": i, "loss": x, "completion_loss": x, "prompt_loss": 2.0}
                                                for i, x in enumerate([1, 2, 3, 4, 5, 2, 2, 2, 2, 2])])
    out_dir = tmp_path / "report"
    assert main(["--scores", scores, "--log", logf, "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "| PLW | w_p |" in text and "critical PLW = 0.242" in text and "not concave" in text
    assert "0.2357" in text  # sqrt(2)/6, the hand-checked RSD above
    files = set(os.listdir(out_dir))
    assert {"table.md", "fit.json"} <= files and not any(f.startswith(".tmp") for f in files)
    assert (out_dir / "table.md").read_text() == text
    assert json.loads((out_dir / "fit.json").read_text())["logs"][logf]["loss_rsd"] == pytest.approx(math.sqrt(2) / 6)


def test_cli_bad_input_subprocess(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"plw": 0, "benchmark": "piqa", "score": 0.5}\n{"plw": 0.1, oops\n')
    p = subprocess.run([sys.executable, SCRIPT, "--scores", str(bad)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert ":2:" in p.stderr and "invalid JSON" in p.stderr


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ('{"plw": 0, "benchmark": "piqa"}\n', ":1: missing key(s) score"),
    ("".join(json.dumps({"plw": p, "benchmark": "piqa", "score": p}) + "\n" for p in (0, 0.1)), "at least 3"),
    ('{"plw": -1, "benchmark": "piqa", "score": 1}\n', "plw must be"),
    ("[1, 2]\n", "expected a JSON object"),
])
def test_cli_bad_inputs(tmp_path, capsys, content, needle):
    path = tmp_path / "scores.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["--scores", str(path)]) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and needle in cap.err


def test_cli_bad_log(tmp_path, capsys):
    logf = write_jsonl(tmp_path / "log.jsonl", log(range(1, 21), step=10))
    assert main(["--log", logf]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "log_interval=10" in err
    assert load_log(logf)[1]["iter"] == 11


# -----------------------------------------------------------------------------
# figures

def test_figures(tmp_path):
    pytest.importorskip("matplotlib")
    files = make_figures(analyze(sweep_rows()), str(tmp_path))
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["fit_long.png", "fit_short.png", "mechanism_short.png"]
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert make_figures(analyze(sweep_rows()), str(tmp_path)) == []
    assert "matplotlib" in capsys.readouterr().err and os.listdir(tmp_path) == []
