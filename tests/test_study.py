"""The small-scale study's pieces: eval/heldout.py (split, NLLs, base samples), sweep.py's heldout rows, and
eval/analyze.py's paired differences against PLW 0 with t intervals over seeds. Fast: no training."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, STORIES
from data.prepare import format_prompt, tokenize
from eval import analyze, heldout, report, scores, stats
from eval.betareg import Z95
from eval.generate import load_model_and_tokenizer
import sweep

STUDY = ROOT / "docs" / "study" / "data"


@pytest.fixture(scope="module")
def stories():
    return load_model_and_tokenizer(STORIES, "cpu", "float32")


def records(n, long_every=0):
    out = []
    for i in range(n):
        text = " ".join(["The cat sat on the mat and looked at the sun."] * (40 if long_every and i % long_every == 0
                                                                             else 2))
        out.append({"instruction": "Predict the prompt.", "input": text, "output": f"Write story number {i}."})
    return out


# -----------------------------------------------------------------------------
# eval/heldout.py

def test_split_keeps_whole_examples_and_a_seed_fixed_disjoint_held_out_set(stories):
    _, tok = stories
    recs = records(30, long_every=5)  # 6 records far longer than 256 tokens
    train, held, rep = heldout.split(recs, tok, 256, n_heldout=8, n_train=10, seed=0)
    lens = np.diff(tokenize(recs, tok)["offsets"])
    assert rep["over_max_seq_len"] == int((lens > 256).sum()) == 6 and rep["fit"] == 24
    assert rep["over_max_seq_len_whole_completion_lost"] == 6  # their prompts alone exceed 256 tokens
    assert len(train) == 10 and len(held) == 8
    assert not {r["output"] for r in train} & {r["output"] for r in held}
    assert all(len(e) <= 256 for e in np.split(tokenize(train + held, tok)["tokens"],
                                                tokenize(train + held, tok)["offsets"][1:-1]))
    train2, held2, _ = heldout.split(recs, tok, 256, n_heldout=8, n_train=5, seed=0)
    assert held2 == held and all(r in train for r in train2)  # n_train does not move the held-out set
    with pytest.raises(ValueError):
        heldout.split(recs, tok, 256, n_heldout=20, n_train=10, seed=0)
    # R_g in the model's own tokens: completion (output + EOS) over prompt (BOS + template + input)
    t = tokenize(train, tok)
    comp = np.add.reduceat(t["roles"], t["offsets"][:-1])
    assert rep["train"]["rg_template"] == pytest.approx(comp.mean() / (np.diff(t["offsets"]) - comp).mean())


def test_token_nll_is_the_mean_ce_of_completion_targets(stories):
    model, tok = stories
    recs = records(5)
    data = tokenize(recs, tok)
    comp, prompt, n_comp, n_prompt = heldout.token_nll(model, data, batch_size=2)
    total, count, ptotal, pcount = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for r in recs:
            p = tok.encode(format_prompt(r["instruction"], r["input"]), bos=True)
            full = tok.encode(format_prompt(r["instruction"], r["input"]) + r["output"], bos=True) + [tok.eos_id]
            logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].double(), -1)
            ce = -logp[torch.arange(len(full) - 1), torch.tensor(full[1:])]
            total += float(ce[len(p) - 1:].sum())   # targets from the first output token on, EOS included
            count += len(full) - len(p)
            ptotal += float(ce[:len(p) - 1].sum())
            pcount += len(p) - 1
    assert n_comp == count and n_prompt == pcount
    assert comp == pytest.approx(total / count, rel=1e-5) and prompt == pytest.approx(ptotal / pcount, rel=1e-5)


def test_base_samples_are_fixed_by_the_seed_and_scored_on_their_tokens(stories):
    model, tok = stories
    a = heldout.base_samples(model, tok, 2, 6, seed=3)
    assert a == heldout.base_samples(model, tok, 2, 6, seed=3)
    assert all(len(s["tokens"]) == 7 and s["tokens"][0] == tok.bos_id and tok.eos_id not in s["tokens"] for s in a)
    nll = heldout.sample_nll(model, a)
    with torch.no_grad():
        t = torch.tensor([s["tokens"] for s in a])
        ref = float(torch.nn.functional.cross_entropy(model(t[:, :-1]).flatten(0, 1).double(), t[:, 1:].flatten()))
    assert nll == pytest.approx(ref, rel=1e-5)


def test_committed_study_data_match_the_split_report():
    rep = json.loads((STUDY / "split.json").read_text())
    train = json.loads((STUDY / "train.json").read_text())
    held = json.loads((STUDY / "heldout.json").read_text())
    assert len(train) == rep["n_train"] and len(held) == rep["n_heldout"]
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in held}
    base = json.loads((STUDY / "base_samples.json").read_text())
    assert len(base["samples"]) == base["n"] and {len(s["tokens"]) for s in base["samples"]} == {base["tokens"] + 1}


# -----------------------------------------------------------------------------
# sweep.py rows

def test_sweep_writes_heldout_rows_with_their_condition(tmp_path):
    run = tmp_path / "plw0.1_seed2"
    run.mkdir()
    res = {"heldout_nll": 2.5, "heldout_prompt_nll": 3.0, "train_nll": 2.0, "train_prompt_nll": 2.9, "gap": 0.5,
           "forget_nll": 1.9, "exact_match": 0.02, "chrf": 30.0, "gen_tokens_mean": 12.0}
    (run / "eval_heldout.json").write_text(json.dumps(res))
    (run / "log.jsonl").write_text("".join(json.dumps({"iter": i, "loss": 2.0 + 0.1 * (i % 2), "completion_loss": 2.5})
                                           + "\n" for i in range(10)))
    rows = sweep.score_rows(("m/stories260K", "d.json", 0.1, "none", 0.0, 2), run)
    by = {r["benchmark"]: r for r in rows}
    assert "loss_rsd" in by and by["completion_loss_rsd"]["score"] == 0.0
    assert by["heldout_nll"]["score"] == 2.5 and by["overfit_gap"]["score"] == 0.5
    assert by["forget_nll"]["higher_is_better"] is False and by["heldout_chrf"]["higher_is_better"] is True
    assert all(r["group"] == "mechanism" and (r["model"], r["plw"], r["regularizer"], r["reg_value"], r["seed"])
               == ("stories260K", 0.1, "none", 0.0, 2) for r in by.values())
    scores.normalize_rows(rows)  # valid score rows


def test_sweep_adds_the_heldout_step_only_when_asked():
    c = {**sweep.train.DEFAULTS, **sweep.SWEEP, "init_from": "base", "dataset": "d.json", "sweep_tasks": "",
         "sweep_mem_n": 0}
    cond = ("base", "d.json", 0.0, "none", 0.0, 1)
    assert [n for n, _, _ in sweep.commands(c, [], [], cond, ROOT / "out" / "x")] == ["train", "distance"]
    c.update(sweep_heldout="h.json", sweep_forget="f.json", sweep_heldout_train_n=7)
    steps = {n: cmd for n, _, cmd in sweep.commands(c, [], [], cond, ROOT / "out" / "x")}
    cmd = steps["heldout"]
    assert cmd[1:3] == ["eval/heldout.py", "eval"]
    assert cmd[cmd.index("--train") + 1] == "d.json" and cmd[cmd.index("--train_n") + 1] == "7"
    assert cmd[cmd.index("--heldout") + 1] == "h.json" and cmd[cmd.index("--base_samples") + 1] == "f.json"


# -----------------------------------------------------------------------------
# eval/analyze.py: paired differences and t intervals

def test_t_quantiles():
    # the tables' values (NIST/SEMATECH e-Handbook 1.3.6.7.2, 3 decimals) and, where installed, scipy's to 1e-9
    assert [round(stats.t975(df), 3) for df in (1, 2, 10, 30, 60, 120)] == [12.706, 4.303, 2.228, 2.042, 2.000, 1.980]
    assert stats.t975(10 ** 6) == pytest.approx(Z95, abs=1e-5)
    with pytest.raises(ValueError):
        stats.t975(0)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 16, 29, 100, 1000):
        assert stats.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-9)


def study_rows():
    rows = []
    base = {0: 2.0, 1: 2.1, 2: 1.9}  # seed effects shared by every PLW: pairing removes them
    for seed, b in base.items():
        for plw, shift, noise in ((0.0, 0.0, 0.0), (0.1, 0.05, [0.01, -0.01, 0.0]), (1.0, 0.3, [0.0, 0.02, -0.02])):
            n = noise if isinstance(noise, float) else noise[seed]
            rows.append({"dataset": "d", "model": "m", "plw": plw, "seed": seed, "benchmark": "heldout_nll",
                         "score": b + shift + n, "group": "mechanism", "higher_is_better": False})
            rows.append({"dataset": "d", "model": "m", "plw": plw, "seed": seed, "benchmark": "arc_easy",
                         "score": 0.25 + 0.01 * seed + (0.003 if plw else 0.0) * (seed - 1), "group": "mc"})
    return rows


def test_paired_differences_are_same_seed_differences_with_a_t_interval():
    p = {(e["benchmark"], e["plw"]): e for e in stats.paired_differences(study_rows())}
    e = p["heldout_nll", 0.1]
    d = np.array([0.05 + 0.01, 0.05 - 0.01, 0.05])
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} in closed form, (2q - 1) / sqrt(2 q (1 - q)) = 4.3027
    half = t2 * d.std(ddof=1) / math.sqrt(3)
    assert e["diff"] == pytest.approx(d.mean()) and e["seeds"] == 3
    assert e["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert e["excludes_zero"] is True and e["base_mean"] == pytest.approx(2.0)
    assert e["sd"] == pytest.approx(np.std([2.06, 2.14, 1.95], ddof=1))  # the unpaired spread is much wider
    assert p["heldout_nll", 1.0]["excludes_zero"] is True
    assert p["arc_easy", 1.0]["excludes_zero"] is False  # differences -0.003, 0, +0.003: noise
    assert p["heldout_nll", 0.0]["ci"] is None and p["heldout_nll", 0.0]["diff"] == 0
    # a regularizer run is not a plain condition, and a PLW without the baseline's seed is left out
    extra = [{"plw": 0.5, "seed": 9, "benchmark": "heldout_nll", "score": 1.0, "dataset": "d", "model": "m",
              "group": "mechanism", "higher_is_better": False},
             {"plw": 1.0, "seed": 0, "benchmark": "heldout_nll", "score": 9.0, "dataset": "d", "model": "m",
              "regularizer": "dropout", "reg_value": 0.1, "group": "mechanism", "higher_is_better": False}]
    p2 = {(e["benchmark"], e["plw"]): e for e in stats.paired_differences(study_rows() + extra)}
    assert ("heldout_nll", 0.5) not in p2 and p2["heldout_nll", 1.0] == p["heldout_nll", 1.0]


def test_analyze_cli_writes_the_paired_tables_and_figures(tmp_path):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in study_rows()))
    out = tmp_path / "analysis"
    assert analyze.main(["--scores", str(scores), "--out", str(out)]) == 0
    md = (out / "table.md").read_text()
    assert "paired differences vs PLW 0" in md and "| heldout_nll ↓ |" in md
    assert "+0.05 [" in md and "]*" in md
    fit = json.loads((out / "fit.json").read_text())
    assert {e["benchmark"] for e in fit["paired"]} == {"heldout_nll", "arc_easy"}
    pytest.importorskip("matplotlib")
    assert (out / "metrics_d.png").stat().st_size > 0 and (out / "paired_d.png").stat().st_size > 0


def test_an_untested_vertex_is_not_printed_as_a_finding():
    fit = stats.fit_quadratic(np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.array([0.2, 0.5, 0.6, 0.5, 0.3]))
    line = report.format_fit(fit)
    assert "critical PLW = " in line and "**" not in line and "untested" in line
