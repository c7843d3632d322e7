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
from eval import analyze, heldout, paired, report, scores, stats
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


def manual_ce(model, tok, r, output=None):
    """(per-target CE of [BOS] + prompt + output + [EOS], number of prompt tokens incl. BOS), from the model's logits"""
    prompt = format_prompt(r["instruction"], r["input"])
    p = tok.encode(prompt, bos=True)
    full = tok.encode(prompt + (r["output"] if output is None else output), bos=True) + [tok.eos_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].double(), -1)
    return -logp[torch.arange(len(full) - 1), torch.tensor(full[1:])], len(p)


def test_record_nll_is_each_records_ce_of_completion_and_prompt_targets(stories):
    model, tok = stories
    recs = records(5)
    got = heldout.record_nll(model, tokenize(recs, tok), batch_size=2)
    for i, r in enumerate(recs):
        ce, n_p = manual_ce(model, tok, r)
        assert got["completion_count"][i] == len(ce) - (n_p - 1) and got["prompt_count"][i] == n_p - 1
        assert got["completion_sum"][i] == pytest.approx(float(ce[n_p - 1:].sum()), rel=1e-5)  # output + EOS
        assert got["prompt_sum"][i] == pytest.approx(float(ce[:n_p - 1].sum()), rel=1e-5)
        assert got["eos"][i] == pytest.approx(float(ce[-1]), rel=1e-5)


def test_choice_scores_are_lm_evals_acc_and_acc_norm(stories):
    model, tok = stories
    recs = records(6)
    items = heldout.choice_items(recs, 4, 3, seed=0, tokenizer=tok, max_seq_len=512)
    assert all(it["choices"][it["gold"]] == r["output"] and len(set(it["choices"])) == 3 for it, r in zip(items, recs))
    got = heldout.choice_scores(model, tok, items, batch_size=5)
    for i, it in enumerate(items):
        # lm-eval: the log-likelihood of the continuation (the choice's tokens, without EOS) after the context
        ll = []
        for c in it["choices"]:
            ce, n_p = manual_ce(model, tok, {**it, "output": c}, c)
            ll.append(-float(ce[n_p - 1:-1].sum()))
        ll = np.array(ll)
        assert got["acc"][i] == float(np.argmax(ll) == it["gold"])
        assert got["acc_norm"][i] == float(np.argmax(ll / [len(c) for c in it["choices"]]) == it["gold"])


def test_story_cloze_items_and_scores(stories):
    model, tok = stories
    samples = heldout.base_samples(model, tok, 6, 12, seed=2)
    items = heldout.cloze_items(samples, 8, 3, seed=1)
    for s, it in zip(samples, items):
        assert it["context"] == s["tokens"][:9] and it["choices"][it["gold"]] == s["tokens"][9:]
        assert len(it["choices"]) == 3 and all(len(c) == 4 for c in it["choices"])
    got = heldout.cloze_scores(model, tok, items, batch_size=4)
    with torch.no_grad():
        for i, it in enumerate(items):
            ll = []
            for c in it["choices"]:
                t = torch.tensor([it["context"] + c])
                logp = torch.log_softmax(model(t[:, :-1])[0].double(), -1)
                ll.append(float(logp[torch.arange(8, 12), t[0, 9:]].sum()))
            assert got["acc"][i] == float(np.argmax(ll) == it["gold"])
            lens = [max(len(tok.decode(c)), 1) for c in it["choices"]]
            assert got["acc_norm"][i] == float(np.argmax(np.array(ll) / lens) == it["gold"])


def test_base_samples_are_fixed_by_the_seed_and_scored_on_their_tokens(stories):
    model, tok = stories
    a = heldout.base_samples(model, tok, 2, 6, seed=3)
    assert a == heldout.base_samples(model, tok, 2, 6, seed=3)
    assert all(len(s["tokens"]) == 7 and s["tokens"][0] == tok.bos_id and tok.eos_id not in s["tokens"] for s in a)
    sums, counts = heldout.sample_nll(model, a)
    assert counts.tolist() == [6, 6]
    with torch.no_grad():
        t = torch.tensor([s["tokens"] for s in a])
        ref = torch.nn.functional.cross_entropy(model(t[:, :-1]).transpose(1, 2).double(), t[:, 1:], reduction="none")
    assert sums == pytest.approx(ref.sum(1).numpy(), rel=1e-5)


def test_committed_study_data_match_the_split_report():
    rep = json.loads((STUDY / "split.json").read_text())
    pool = json.loads((STUDY / "pool.json").read_text())
    held = json.loads((STUDY / "heldout.json").read_text())
    assert len(pool) == rep["n_train"] == 1122 and len(held) == rep["n_heldout"] == 500
    assert not {json.dumps(r) for r in pool} & {json.dumps(r) for r in held}
    base = json.loads((STUDY / "base_samples.json").read_text())
    assert len(base["samples"]) == base["n"] and {len(s["tokens"]) for s in base["samples"]} == {base["tokens"] + 1}
    cloze = json.loads((STUDY / "story_cloze.json").read_text())
    assert len(cloze["items"]) == 200 and {len(c) for it in cloze["items"] for c in it["choices"]} == {32}
    assert {json.dumps(it["context"]) for it in cloze["items"]}.isdisjoint(  # not the forgetting set's samples
        {json.dumps(s["tokens"][:97]) for s in base["samples"]})


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


def test_seeds_draw_their_training_records_and_controls_change_one_setting(tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records(12)))
    c = {**sweep.train.DEFAULTS, **sweep.SWEEP, "init_from": "base", "dataset": str(pool), "sweep_tasks": "",
         "sweep_mem_n": 0, "sweep_train_n": 5, "sweep_heldout": "h.json"}
    one = sweep.seed_data(c, str(pool), 1, tmp_path)
    assert json.loads(one.read_text()) == json.loads(sweep.seed_data(c, str(pool), 1, tmp_path).read_text())
    two = json.loads(sweep.seed_data(c, str(pool), 2, tmp_path).read_text())
    assert len(two) == 5 and two != json.loads(one.read_text()) and all(r in records(12) for r in two)
    dom = json.loads(sweep.seed_data(c, str(pool), 1, tmp_path, domain=True).read_text())
    assert dom[:5] == json.loads(one.read_text())  # the same records, then their prompts as plain text
    assert dom[5:] == [{"text": format_prompt(r["instruction"], r["input"])} for r in dom[:5]]
    for reg, value, flag in (("domain", 0.05, "--text_loss_weight=0.05"), ("max_iters", 51.0, "--max_iters=51"),
                             ("learning_rate", 6.94e-4, "--learning_rate=0.000694")):
        steps = {n: cmd for n, _, cmd in sweep.commands(c, [], [], ("base", str(pool), 0.0, reg, value, 1),
                                                          tmp_path / "run", tmp_path)}
        assert flag in steps["train"]
        data = next(a for a in steps["train"] if a.startswith("--dataset="))
        assert data.endswith("_domain.json") == (reg == "domain")
        assert steps["heldout"][steps["heldout"].index("--train") + 1] == str(one)  # never the text records


def test_a_sweep_split_over_processes_names_its_runs_as_the_whole_sweep():
    c = {**sweep.train.DEFAULTS, **sweep.SWEEP, "init_from": "base", "dataset": "d.json"}
    whole = sweep.conditions({**c, "sweep_seeds": "1,2,3", "sweep_plw": "0,1"})
    part = sweep.conditions({**c, "sweep_seeds": "3", "sweep_plw": "0,1"})
    names = {sweep.run_name({**c, "sweep_seeds": "1,2,3"}, *g, whole) for g in whole}
    assert {sweep.run_name({**c, "sweep_seeds": "3"}, *g, part) for g in part} <= names == {
        f"plw{p}_seed{s}" for p in (0, 1) for s in (1, 2, 3)}
    plain = sweep.conditions(c)  # no --seeds: the config's one seed, no suffix
    assert [sweep.run_name(c, *g, plain) for g in plain][0] == "plw0"


def test_record_rows_carry_each_records_numbers(tmp_path):
    run = tmp_path / "plw0_seed3"
    run.mkdir()
    recs = {"heldout": {"completion_sum": [2.0, 4.0], "completion_count": [1, 2], "prompt_sum": [1.0, 1.0],
                        "prompt_count": [1, 1]},
            "train": {"completion_sum": [3.0], "completion_count": [2], "prompt_sum": [1.0], "prompt_count": [1]},
            "forget": {"sum": [5.0], "count": [4]}, "cloze": {"acc": [1.0, 0.0], "acc_norm": [1.0, 1.0]}}
    (run / "eval_heldout.json").write_text(json.dumps({"records": recs}))
    (run / "eval_mc.json").write_text(json.dumps({"samples": {"arc_easy": [{"acc": 1.0, "acc_norm": 0.0},
                                                                             {"acc": 0.0, "acc_norm": 1.0}]}}))
    rows = {r["benchmark"]: r for r in sweep.record_rows(("m/x", "d.json", 0.0, "none", 0.0, 3), run)}
    assert rows["arc_easy"]["records"] == "mc:arc_easy" and rows["arc_easy"]["num"] == [0.0, 1.0]  # its acc_norm
    assert rows["heldout_nll"]["records"] == "heldout" and rows["heldout_nll"]["num"] == [2.0, 4.0]
    assert rows["train_nll"]["records"] == "train:seed3" and rows["forget_nll"]["den"] == [4]
    assert rows["story_cloze"]["num"] == [1.0, 1.0] and rows["story_cloze"]["den"] == [1, 1]
    assert "heldout_mc_acc" not in rows


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
    p = {(e["benchmark"], e["plw"]): e for e in paired.paired_differences(study_rows())}
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
    p2 = {(e["benchmark"], e["plw"], e["regularizer"]): e for e in paired.paired_differences(study_rows() + extra)}
    assert ("heldout_nll", 0.5, "none") not in p2 and p2["heldout_nll", 1.0, "none"] == p["heldout_nll", 1.0]
    assert p2["heldout_nll", 1.0, "dropout"]["diff"] == pytest.approx(9.0 - 2.0)  # a variant, against PLW 0
    assert paired.condition_label(p2["heldout_nll", 1.0, "dropout"]) == "PLW 1 + dropout 0.1"


def test_holm_equals_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.02]
    assert paired.holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1], abs=1e-12)


def test_two_level_interval_adds_the_bootstrap_over_shared_records():
    # 3 seeds; PLW 0.1's held-out records all move by +0.05 (one shared set); train records differ by seed
    rng = np.random.default_rng(0)
    per = rng.normal(2.0, 0.5, 40)                                   # each held-out record's mean CE at PLW 0
    rows, recs = [], {}
    for seed in range(3):
        for plw, shift in ((0.0, 0.0), (0.1, 0.05 + 0.01 * (seed - 1))):
            num = (per + shift + rng.normal(0, 0.2, 40)) * 10        # sums of 10 tokens per record
            den = np.full(40, 10.0)
            rows.append({"dataset": "d", "model": "m", "plw": plw, "seed": seed, "benchmark": "heldout_nll",
                         "score": float(num.sum() / den.sum()), "group": "mechanism", "higher_is_better": False})
            recs["d", "m", "none", 0.0, plw, seed, "heldout_nll"] = ("heldout", num, den)
            recs["d", "m", "none", 0.0, plw, seed, "train_nll"] = (f"train:seed{seed}", num, den)
            rows.append({**rows[-1], "benchmark": "train_nll"})
    es = paired.add_two_level(paired.paired_differences(rows), recs)
    e = next(e for e in es if e["benchmark"] == "heldout_nll" and e["plw"] == 0.1)
    idx = paired.resamples("heldout", 40)
    boot = np.mean([(recs["d", "m", "none", 0.0, 0.1, s, "heldout_nll"][1][idx].sum(1) -
                     recs["d", "m", "none", 0.0, 0.0, s, "heldout_nll"][1][idx].sum(1)) / 400 for s in range(3)], 0)
    assert e["se_records"] == pytest.approx(boot.std(ddof=1))
    se = math.sqrt(e["diff_sd"] ** 2 / 3 + e["se_records"] ** 2)
    assert e["ci2"] == pytest.approx([e["diff"] - stats.t975(2) * se, e["diff"] + stats.t975(2) * se])
    assert e["ci2"][1] - e["ci2"][0] > e["ci"][1] - e["ci"][0]
    t = next(e for e in es if e["benchmark"] == "train_nll" and e["plw"] == 0.1)
    assert t["se_records"] is None and t["ci2"] == pytest.approx(t["ci"])  # a seed's own records: in its spread


def test_families_and_the_control_verdict():
    rows, rng = [], np.random.default_rng(1)
    for seed in range(4):
        for plw, reg, value, shift in ((0.0, "none", 0, 0.0), (0.05, "none", 0, -0.1), (0.0, "learning_rate", 7e-4, -0.1),
                                       (0.0, "dropout", 0.1, 0.0), (1.0, "none", 0, 0.3)):
            rows.append({"dataset": "d", "plw": plw, "regularizer": reg, "reg_value": value, "seed": seed,
                         "benchmark": "heldout_nll", "score": 2.0 + shift + rng.normal(0, 0.01),
                         "group": "mechanism", "higher_is_better": False})
            rows.append({**rows[-1], "benchmark": "forget_nll", "score": 1.0 + 0.01 * seed})
    vs0 = paired.add_two_level(paired.paired_differences(rows), None)
    vsref = [e for e in paired.add_two_level(paired.paired_differences(rows, 0.05), None) if e["regularizer"] != "none"
             and e["benchmark"] == "heldout_nll"]
    paired.correct(vs0 + vsref, "heldout_nll", 0.05)
    fam = {(e["benchmark"], e["plw"], e["regularizer"], e["baseline"]): e["family"] for e in vs0 + vsref if e["ci"]}
    assert fam["heldout_nll", 0.05, "none", 0.0] == fam["heldout_nll", 1.0, "none", 0.0] == "primary"
    assert fam["heldout_nll", 0.0, "dropout", 0.0] == fam["heldout_nll", 0.0, "dropout", 0.05] == "controls"
    assert fam["forget_nll", 0.05, "none", 0.0] == "secondary"
    md = report.markdown_controls(vs0, vsref, "heldout_nll", 0.05)
    assert "| PLW 0 + learning_rate 0.0007 |" in md and "not distinguishable from PLW 0.05's" in md
    assert "| PLW 0 + dropout 0.1 |" in md and "no gain over PLW 0" in md


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
