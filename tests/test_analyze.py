"""
eval/analyze.py and its pieces (scores.py, stats.py, report.py): the w_p transform, relative scores, the quadratic fit and its critical PLW, loss RSD, the CLI.

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

from eval.analyze import analyze, main
from eval.figures import make_figures
from eval.report import markdown_table
from eval.scores import PAPER_PLWS, aggregate, infer_group, normalize_rows, plw_from_wp, relative_scores, wp
from eval.stats import fit_quadratic, load_log, loss_rsd

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


def test_log_rsd_of_every_normalisation_from_a_real_run(tmp_path, capsys):
    # train.py's log carries the loss under each normalisation; analyze reports the RSD of each, loss_hf's first
    import subprocess
    import sys
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "configs/tiny_stories.py", f"--out_dir={out}", "--max_iters=10",
                        "--max_seq_len=256", "--global_batch_size=8", "--batch_size=2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all({"loss", "loss_nonzero", "loss_micro_mean", "loss_hf"} <= row.keys() for row in rows)
    assert main(["--log", str(out / "log.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["logs"][str(out / "log.jsonl")]
    for key in ("loss_hf", "loss", "loss_micro_mean", "loss_nonzero", "completion_loss", "prompt_loss"):
        assert summary[f"{key}_rsd"] == pytest.approx(loss_rsd(rows, key)), key
    assert main(["--log", str(out / "log.jsonl")]) == 0
    assert "| log | loss_hf | loss | loss_micro_mean | loss_nonzero |" in capsys.readouterr().out


def test_mechanism_rows_lead_with_the_papers_loss_rsd():
    rows = [{"plw": p, "benchmark": b, "score": v, "group": g} for p, v in ((0, 0.2), (0.1, 0.5), (1, 0.3))
            for b, g in (("arc_easy", "mc"), ("completion_loss_rsd", "mechanism"), ("loss_rsd", "mechanism"),
                         ("loss_hf_rsd", "mechanism"), ("memorization_bleu", "mechanism"))]
    assert list(analyze(rows)["datasets"]["default"]["benchmarks"]) == [
        "arc_easy", "loss_hf_rsd", "loss_rsd", "completion_loss_rsd", "memorization_bleu"]


def test_cli_bad_input_subprocess(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"plw": 0, "benchmark": "piqa", "score": 0.5}\n{"plw": 0.1, oops\n')
    p = subprocess.run([sys.executable, SCRIPT, "--scores", str(bad)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert ":2:" in p.stderr and "invalid JSON" in p.stderr


def test_two_plws_are_compared_without_a_curve(tmp_path, capsys):
    # a grid of two PLWs (or of controls around one): its table and comparisons, and the reason there is no curve
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"plw": p, "benchmark": "piqa", "score": p}) + "\n" for p in (0, 0.1)))
    assert main(["--scores", str(scores)]) == 0
    out = capsys.readouterr().out
    assert "| 0.1 |" in out and "no fit (a quadratic needs at least 3 distinct PLW values, got 2 (0, 0.1))" in out


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ('{"plw": 0, "benchmark": "piqa"}\n', ":1: missing key(s) score"),
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


# -----------------------------------------------------------------------------
# conditions: model, dataset, PLW, regularizer + value, seed

def cond_rows():
    """One benchmark (arc_challenge, mc) on dataset 'd': plain PLW 0 / 0.1 / 1 (PLW 0 with seeds 0, 1, 2), weight
    decay 0.1 at PLW 0 and dropout 0.05 at PLW 0 and 1. Scores chosen so the min-max scale is 0.2 .. 0.6."""
    def row(plw, score, **kw):
        return {"dataset": "d", "plw": plw, "benchmark": "arc_challenge", "score": score, **kw}
    return [
        row(0.0, 0.30), row(0.0, 0.40, seed=1), row(0.0, 0.20, seed=2),     # plain PLW 0: rel 0.25, 0.5, 0
        row(0.1, 0.60), row(1.0, 0.50),                                    # rel 1, 0.75
        row(0.0, 0.50, regularizer="weight_decay", reg_value=0.1),          # rel 0.75, same PLW as plain PLW 0
        row(0.0, 0.40, regularizer="dropout", reg_value=0.05),             # rel 0.5
        row(1.0, 0.30, regularizer="dropout", reg_value=0.05),             # rel 0.25
        row(0.0, 0.55, regularizer="dropout", reg_value=0.05, seed=1),      # rel 0.875 -> dropout @0: 0.6875
    ]


def test_conditions_never_collide():
    rows = normalize_rows(cond_rows())
    assert len(rows) == 9  # every row is its own run
    keys = {(r["regularizer"], r["reg_value"], r["plw"], r["seed"]) for r in rows}
    assert len(keys) == 9
    # a re-run of the same run and benchmark still replaces the earlier row
    again = normalize_rows(cond_rows() + [{"dataset": "d", "plw": 0.0, "benchmark": "arc_challenge", "score": 0.35,
                                           "seed": 1}])
    assert len(again) == 9 and [r["score"] for r in again if r["plw"] == 0 and r["seed"] == 1
                                and r["regularizer"] == "none"] == [0.35]


def test_old_rows_get_the_default_condition():
    r = normalize_rows([{"plw": 0.1, "benchmark": "piqa", "score": 0.5}])[0]
    assert (r["model"], r["dataset"], r["regularizer"], r["reg_value"], r["seed"], r["metric"]) == \
        ("", "default", "none", 0.0, 0, "")


def test_seeds_are_averaged_with_their_spread():
    agg = {(a["regularizer"], a["plw"]): a for a in aggregate(cond_rows())}
    plain0 = agg[("none", 0.0)]
    assert plain0["seeds"] == 3 and plain0["relative"] == pytest.approx(0.25)
    assert plain0["sd"] == pytest.approx(0.25) and (plain0["min"], plain0["max"]) == pytest.approx((0, 0.5))
    assert plain0["simple"] == pytest.approx(0.30)
    assert agg[("none", 0.1)]["sd"] is None and agg[("none", 0.1)]["seeds"] == 1
    assert agg[("weight_decay", 0.0)]["relative"] == pytest.approx(0.75)
    assert agg[("dropout", 0.0)]["relative"] == pytest.approx(0.6875)
    assert [(a["regularizer"], a["plw"]) for a in aggregate(cond_rows())] == [
        ("none", 0.0), ("none", 0.1), ("none", 1.0), ("dropout", 0.0), ("dropout", 1.0), ("weight_decay", 0.0)]


def test_regularizer_table_hand_checked():
    res = analyze(cond_rows())["datasets"]["d"]
    assert [e["plw"] for e in res["table"]] == [0.0, 0.1, 1.0]  # plain runs only
    regs = [(r["label"], r["relative"], r["delta"]) for r in res["regularizers"]]
    assert regs == [("PLW 0", pytest.approx(0.25), pytest.approx(0)), ("PLW 1", pytest.approx(0.75), pytest.approx(0.5)),
                    ("best PLW (0.1)", pytest.approx(1.0), pytest.approx(0.75)),
                    ("dropout 0.05", pytest.approx(0.6875), pytest.approx(0.4375)),
                    ("dropout 0.05", pytest.approx(0.25), pytest.approx(0.0)),
                    ("weight_decay 0.1", pytest.approx(0.75), pytest.approx(0.5))]
    assert [r["plw"] for r in res["regularizers"]][3:] == [0.0, 1.0, 0.0]
    md = markdown_table(analyze(cond_rows()))
    assert "Regularizers and controls vs PLW" in md and "| dropout 0.05 | 1 | 0.250 |" in md and "| ± sd | seeds |" in md
    assert "Regularizers" not in markdown_table(analyze(SMALL))


@pytest.mark.parametrize("bad,needle", [
    ({"regularizer": "l2"}, "regularizer must be one of"),
    ({"reg_value": 0.1}, "without a regularizer"),
    ({"regularizer": "dropout", "reg_value": -1}, "reg_value must be"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"model": 7}, "model must be a string"),
    ({"group": "gen_long"}, "group must be one of"),
])
def test_bad_condition_fields(bad, needle):
    with pytest.raises(ValueError, match=needle):
        normalize_rows([{"plw": 0.1, "benchmark": "piqa", "score": 0.5, **bad}])


def test_metric_disagreement_is_refused():
    rows = [{"plw": p, "benchmark": "arc_easy", "score": p, "metric": "acc"} for p in (0, 0.1, 1)]
    rows[2]["metric"] = "acc_norm"
    with pytest.raises(ValueError, match="own benchmark name"):
        normalize_rows(rows)


def test_paper_groups_and_pooled_models():
    # two base models pooled in one min-max scale per benchmark; Group I = mc + short_gen, Group II = long_gen
    rows = []
    for model, off in (("llama1", 0.0), ("llama2", 0.1)):
        for p, (mc, wmt, ae) in {0.0: (0.2, 10, 0.5), 0.1: (0.4, 30, 0.3), 1.0: (0.3, 20, 0.7)}.items():
            rows += [{"model": model, "plw": p, "benchmark": "arc_challenge", "score": mc + off},
                     {"model": model, "plw": p, "benchmark": "wmt16_en_de", "score": wmt},
                     {"model": model, "plw": p, "benchmark": "alpaca_eval", "score": ae}]
    assert [infer_group(b) for b in ("arc_challenge", "wmt16_en_de", "truthfulqa_gen", "alpaca_eval", "pandalm")] \
        == ["mc", "short_gen", "short_gen", "long_gen", "long_gen"]
    one = {(a["model"], a["plw"]): a for a in aggregate(rows, "I")}
    # arc pooled over both models: 0.2 .. 0.5; wmt 10 .. 30
    assert one[("llama1", 0.0)]["relative"] == pytest.approx((0 + 0) / 2)
    assert one[("llama2", 0.1)]["relative"] == pytest.approx((1 + 1) / 2)
    assert one[("llama1", 1.0)]["relative"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert one[("llama1", 1.0)]["simple"] == pytest.approx((0.3 + 20) / 2)
    two = {(a["model"], a["plw"]): a["relative"] for a in aggregate(rows, "II")}
    assert two[("llama2", 0.1)] == pytest.approx(0) and two[("llama1", 1.0)] == pytest.approx(1)
    res = analyze(rows)["datasets"]["default"]
    assert list(res["fit_by_group"]) == ["I", "II", "mc", "short_gen"] and len(res["table"]) == 6
    assert res["beta"]["all"]["models"] == 2 and res["beta"]["II"]["n"] == 6
    md = markdown_table(analyze(rows))
    assert "| model | PLW | w_p |" in md and "| rel. I | rel. II |" in md and "Group II (long_gen)" in md


def test_cli_on_the_study_scores(capsys):
    assert main(["--scores", os.path.join(ROOT, "tests", "fixtures", "study_2026-11-25_scores.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "| rel. aggregate | ± sd | seeds | rel. I | simple I |" in text
    assert "| 0.0005 | 0.101 | 0.234 | 0.28 | 0.474 |" in text and "| 0.265 | - | 1 | 0.265 |" in text
    assert "critical PLW = 0.189" in text  # the least-squares quick view, unchanged
    assert "z = -0.89, p = 0.376 (not significant at 0.05)" in text


def test_regularizer_figure(tmp_path):
    pytest.importorskip("matplotlib")
    names = sorted(os.path.basename(f) for f in make_figures(analyze(cond_rows()), str(tmp_path)))
    assert names == ["fit_d.png", "regularizers_d.png"]
