"""eval/judge.py: PandaLM's judge prompt and verdict rules (expected strings written out from
pandalm/utils/pandalm_inference.py), both-order aggregation, agreement metrics against sklearn, the three commands
end to end on the stories260K fixture (and on a scripted judge that always answers "1"), and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SHARED, STORIES, require
from checkpoint import save_model
from eval.judge import (agreement_metrics, combine, fit_prompt, human_labels, judge_bos_id, judge_pairs, main,
                        pandalm_prompt, parse_verdict, tally)
from model import ModelArgs, Transformer
from tokenizer import Tokenizer
from util import cli

EVAL = SHARED / "data" / "eval"


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(STORIES)

# -----------------------------------------------------------------------------
# PandaLM's prompt and verdict


def test_pandalm_prompt_follows_pandalm_inference_rules():
    # with an input: the "with an Input" header and an Input section
    assert pandalm_prompt("Translate to French.", "Good morning", "Bonjour", "Bonsoir") == (
        "Below are two responses for a given task. The task is defined by the Instruction with an Input that provides "
        "further context. Evaluate the responses and generate a reference answer for the task.\n\n"
        "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n"
        "### Response 1:\nBonjour\n\n### Response 2:\nBonsoir\n\n### Evaluation:\n")
    # no input; responses stripped, special-token strings removed anywhere, stripped again; the instruction as is
    assert pandalm_prompt(" Name a color. ", "", "  <s>Red</s> \n", "\n[PAD]Blue<unk>and green <|endoftext|>") == (
        "Below are two responses for a given task. The task is defined by the Instruction. Evaluate the responses and "
        "generate a reference answer for the task.\n\n### Instruction:\n Name a color. \n\n"
        "### Response 1:\nRed\n\n### Response 2:\nBlueand green\n\n### Evaluation:\n")
    # an empty response stays an empty section; PandaLM's `if input:` keeps a whitespace input
    assert pandalm_prompt("Say hi.", " ", "", "[CLS]hi[MASK]") == (
        "Below are two responses for a given task. The task is defined by the Instruction with an Input that provides "
        "further context. Evaluate the responses and generate a reference answer for the task.\n\n"
        "### Instruction:\nSay hi.\n\n### Input:\n \n\n### Response 1:\n\n\n### Response 2:\nhi\n\n### Evaluation:\n")


@pytest.mark.parametrize("text, verdict", [
    ("1\n\n### Reason: Response 1 is better.\n\n### Reference: x", (1, True)),
    ("2", (2, True)),
    ("\n\n 2\n### Reason: y", (2, True)),        # the whole text is stripped first
    ("</s>1\n", (1, True)),                      # special-token strings are removed before parsing
    ("2<unk>", (2, True)),
    ("Tie\n\n### Reason: both fine", (0, True)),
    ("TIE", (0, True)),
    ("tie", (0, True)),
    ("1 \nmore", (0, False)),                    # the first line is not stripped again: "1 " is not "1"
    ("12", (0, False)),
    ("1.", (0, False)),
    ("Response 1 is better", (0, False)),
    ("Tie.", (0, False)),
    ("", (0, False)),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_combine_both_orders():
    # v_ab judges (A, B), v_ba judges (B, A): "1" in the second order prefers B
    table = {(1, 2): "win", (1, 0): "win", (0, 2): "win", (2, 1): "lose", (2, 0): "lose", (0, 1): "lose",
             (1, 1): "tie", (2, 2): "tie", (0, 0): "tie"}
    for (ab, ba), result in table.items():
        assert combine(ab, ba) == result, (ab, ba)


PAIRS = [("Describe the sky.", "", "good: blue", "bad"), ("Say hi.", "", "bad", "good: hi"),
         ("Count.", "one two", "bad", "bad too"), ("Name a fruit.", "", "good: apple", "good: pear")]


def test_a_judge_that_always_says_1_gives_all_ties(tok):
    seen = []

    def always_1(prompts):
        seen.extend(prompts)
        return ["1\n\n### Reason: Response 1 is better."] * len(prompts)

    samples = judge_pairs(PAIRS, tok, 512, always_1)
    assert [s["result"] for s in samples] == ["tie"] * 4
    t = tally(samples)
    assert (t["wins"], t["ties"], t["losses"], t["win_rate"]) == (0, 4, 0, 0.5)
    assert t["win_rate_a_first"] == 1.0 and t["consistency"] == 0.0 and t["unparsed"] == 0
    # both orders of every pair were asked, (A, B) then (B, A), as [BOS] + tokens(PandaLM prompt)
    assert len(seen) == 8
    for k, (ins, inp, a, b) in enumerate(PAIRS):
        assert seen[2 * k] == tok.encode(pandalm_prompt(ins, inp, a, b), bos=True)
        assert seen[2 * k + 1] == tok.encode(pandalm_prompt(ins, inp, b, a), bos=True)


def test_a_content_judge_counts_wins_ties_and_losses(tok):
    def prefers_good(prompts):  # "1"/"2" for the only response that starts with "good", else "Tie"
        out = []
        for p in prompts:
            text = tok.decode(p)
            r1 = text.split("### Response 1:\n")[1].split("\n\n### Response 2:")[0]
            r2 = text.split("### Response 2:\n")[1].split("\n\n### Evaluation:")[0]
            good1, good2 = r1.startswith("good"), r2.startswith("good")
            out.append("1" if good1 and not good2 else "2" if good2 and not good1 else "Tie")
        return out

    samples = judge_pairs(PAIRS, tok, 512, prefers_good)
    assert [s["result"] for s in samples] == ["win", "lose", "tie", "tie"]
    assert [(s["verdict_ab"], s["verdict_ba"]) for s in samples] == [(1, 2), (2, 1), (0, 0), (0, 0)]
    t = tally(samples)
    assert (t["wins"], t["ties"], t["losses"], t["win_rate"], t["consistency"]) == (1, 2, 1, 0.5, 1.0)
    assert samples[2]["input"] == "one two" and "input" not in samples[0]


def test_judge_bos_is_the_one_its_tokenizer_files_name(tok, tmp_path):
    assert judge_bos_id(tmp_path, tok) == tok.bos_id == 1  # no HF tokenizer files: <s>
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>", "lstrip": False}}))
    assert judge_bos_id(tmp_path, tok) == 1
    # PandaLM-7B's special_tokens_map.json: bos, eos and unk all "</s>", as PandaLM's training set them
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "[PAD]", "unk_token": "</s>"}))
    assert judge_bos_id(tmp_path, tok) == tok.eos_id == 2
    seen = []
    judge_pairs(PAIRS[:1], tok, 512, lambda prompts: seen.extend(prompts) or ["1"] * len(prompts), bos=2)
    assert [p[0] for p in seen] == [2, 2] and seen[0][1:] == tok.encode(pandalm_prompt(*PAIRS[0]))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<nope>"}))
    with pytest.raises(ValueError, match="bos_token '<nope>' is not a piece"):
        judge_bos_id(tmp_path, tok)


def test_fit_prompt_cuts_the_longer_response_first(tok):
    long, short = "the cat sat on the mat " * 20, "a dog"
    full = tok.encode(pandalm_prompt("Say.", "", long, short), bos=True)
    ids, cut = fit_prompt(tok, len(full), "Say.", "", long, short)
    assert ids == full and not cut
    ids, cut = fit_prompt(tok, len(full) - 40, "Say.", "", long, short)
    assert cut and len(ids) <= len(full) - 40
    text = tok.decode(ids)
    assert text.endswith("### Response 2:\na dog\n\n### Evaluation:\n")  # the short one is untouched
    assert text.split("### Response 1:\n")[1].startswith("the cat sat")
    header = len(tok.encode(pandalm_prompt("Say.", "", "", ""), bos=True))
    assert fit_prompt(tok, header - 1, "Say.", "", long, short) == (None, True)  # not even empty responses fit
    # a pair that cannot fit is not judged: a tie, counted as too_long
    s = judge_pairs([("Say. " * 200, "", "x", "y")], tok, 512, lambda prompts: ["1"] * len(prompts))[0]
    assert s["too_long"] and s["result"] == "tie" and tally([s])["too_long"] == 1

# -----------------------------------------------------------------------------
# agreement metrics


def test_agreement_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    gold = [0, 1, 2, 2, 1, 1, 0, 2, 2, 1]
    pred = [0, 1, 1, 2, 2, 1, 1, 2, 0, 1]
    m = agreement_metrics(pred, gold)
    p, r, f, support = metrics.precision_recall_fscore_support(gold, pred, labels=[0, 1, 2], zero_division=0)
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred)) == 0.6
    for i, name in enumerate(("tie", "1", "2")):
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[i], r[i], f[i], support[i]))
    macro = metrics.precision_recall_fscore_support(gold, pred, average="macro", zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(macro[:3])
    # a class never predicted: precision 0, not an error
    assert agreement_metrics([1, 1], [0, 1])["per_class"]["tie"]["precision"] == 0.0


def test_human_label_is_the_majority():
    records = json.loads(require(EVAL / "pandalm" / "testset-v1.json").read_text())
    gold = human_labels("t", records)
    assert [gold.count(c) for c in (0, 1, 2)] == [105, 422, 472]  # PandaLM's README counts
    with pytest.raises(ValueError, match="record 1 has no majority"):
        human_labels("t", [{"annotator1": 1, "annotator2": 1, "annotator3": 0},
                           {"annotator1": 0, "annotator2": 1, "annotator3": 2}])

# -----------------------------------------------------------------------------
# the commands end to end


def run_main(*argv):
    """judge.py as its command line runs it, in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli(main, "judge.py", [str(a) for a in argv])
    return e.value.code, out.getvalue(), err.getvalue()


def scripted_judge(path):
    """A real checkpoint that answers "1" and then EOS to any prompt ending in a newline: no attention or MLP
    output, so the residual stream is the current token's embedding, which the head maps to the next token."""
    tok = Tokenizer(STORIES)
    nl, one = tok.encode("\n")[-1], tok.encode("1")[-1]
    assert tok.id_to_piece(nl) == "<0x0A>" and tok.id_to_piece(one) == "1"
    args = ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, hidden_dim=16, vocab_size=512,
                     max_seq_len=512)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for p in (model.norm.weight, *[l.input_layernorm.weight for l in model.layers],
                  *[l.post_attention_layernorm.weight for l in model.layers]):
            p.fill_(1.0)
        e = torch.eye(16)
        model.embed_tokens.weight[:] = e[2]
        model.embed_tokens.weight[nl], model.embed_tokens.weight[one] = e[0], e[1]
        model.lm_head.weight[one], model.lm_head.weight[tok.eos_id] = 10 * e[0], 10 * e[1]
    save_model(model, path)
    shutil.copy(STORIES / "tokenizer.model", path / "tokenizer.model")
    return path


def test_alpaca_eval_end_to_end(tmp_path):
    require(EVAL / "alpaca_eval" / "text_davinci_003_outputs.json")
    res, outs = tmp_path / "ae.json", tmp_path / "outputs.json"
    code, out, err = run_main("alpaca_eval", "--outputs", STORIES, "--judge", STORIES, "--limit", 3, "--output", res,
                              "--save_outputs", outs, "--max_new_tokens", 24, "--judge_max_new_tokens", 8,
                              "--device", "cpu")
    assert code == 0, err
    d = json.loads(res.read_text())
    r = d["results"]["alpaca_eval"]
    assert r["n"] == 3 and r["wins"] + r["ties"] + r["losses"] == 3 and 0 <= r["win_rate"] <= 1
    assert r["hit_max_new_tokens"] == 1.0 and r["length_tokens"] > 0 and r["length_words"] > 0
    assert out.startswith("alpaca_eval: win rate") and "length:" in out
    rows = json.loads(outs.read_text())  # AlpacaEval's model_outputs format, for an official run elsewhere
    assert [set(x) for x in rows] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert [s["response_a"] for s in d["samples"]] == [x["output"] for x in rows]
    # the saved outputs judged as a file give the same result
    code, _, err = run_main("alpaca_eval", "--outputs", outs, "--judge", STORIES, "--limit", 3,
                            "--output", tmp_path / "ae2.json", "--judge_max_new_tokens", 8, "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "ae2.json").read_text())["results"]["alpaca_eval"] == \
        {k: v for k, v in r.items() if k != "hit_max_new_tokens"}


def test_pandalm_and_agreement_with_a_judge_that_always_says_1(tmp_path):
    require(EVAL / "pandalm" / "testset-v1.json")
    judge = scripted_judge(tmp_path / "judge")
    b = tmp_path / "b.json"
    records = json.loads((EVAL / "pandalm" / "testset-inference-v1.json").read_text())[:3]
    b.write_text(json.dumps([{**r, "output": "baseline answer"} for r in records]))
    code, out, err = run_main("pandalm", "--model_a", STORIES, "--model_b", b, "--judge", judge, "--limit", 3,
                              "--output", tmp_path / "pl.json", "--max_new_tokens", 16, "--device", "cpu")
    assert code == 0, err
    d = json.loads((tmp_path / "pl.json").read_text())
    r = d["results"]["pandalm"]
    assert (r["wins"], r["ties"], r["losses"], r["win_rate"], r["consistency"], r["unparsed"]) == (0, 3, 0, .5, 0, 0)
    assert [(s["judge_ab"], s["judge_ba"]) for s in d["samples"]] == [("1", "1")] * 3
    assert [s["input"] for s in d["samples"]] == [x["input"] for x in records]
    assert r["length_words_b"] == 2.0 and out.startswith("pandalm: win rate 50.00% (0 win / 3 tie / 0 lose of 3")

    code, out, err = run_main("agreement", "--judge", judge, "--limit", 3, "--output", tmp_path / "ag.json",
                              "--device", "cpu")
    assert code == 0, err
    r = json.loads((tmp_path / "ag.json").read_text())["results"]["agreement"]
    # the first three human labels are 2, 1, 2: "1" in the given order is right once; both orders say tie
    assert r["n"] == 3 and r["accuracy"] == pytest.approx(1 / 3) and r["both_orders"]["accuracy"] == 0.0
    assert r["per_class"]["1"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1, "predicted": 3}
    assert out.startswith("agreement with humans on 3 pairs: accuracy 33.33")


def test_agreement_with_the_stories_model_runs(tmp_path):
    require(EVAL / "pandalm" / "testset-v1.json")
    code, out, err = run_main("agreement", "--judge", STORIES, "--limit", 3, "--output", tmp_path / "ag.json",
                              "--judge_max_new_tokens", 8, "--device", "cpu")
    assert code == 0, err
    d = json.loads((tmp_path / "ag.json").read_text())
    assert d["results"]["agreement"]["n"] == 3 and [s["human"] for s in d["samples"]] == [2, 1, 2]

# -----------------------------------------------------------------------------
# bad input: one line, exit 1, nothing written


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    require(EVAL / "alpaca_eval" / "text_davinci_003_outputs.json")
    ref = json.loads((EVAL / "alpaca_eval" / "text_davinci_003_outputs.json").read_text())
    swapped = tmp_path / "swapped.json"  # record 1 answers a different instruction
    swapped.write_text(json.dumps([ref[0], {**ref[1], "instruction": "Something else entirely"}, *ref[2:]]))
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(ref + [{**ref[0], "instruction": "One more question"}]))
    not_llama = tmp_path / "gpt2"
    not_llama.mkdir()
    (not_llama / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    res = tmp_path / "out" / "res.json"
    A = ["alpaca_eval", "--judge", STORIES, "--output", res, "--device", "cpu"]
    cases = [
        (A + ["--outputs", tmp_path / "missing.json"], "missing.json: file not found"),
        (A + ["--outputs", STORIES, "--reference", tmp_path / "no_ref.json"], "no_ref.json: file not found"),
        (A + ["--outputs", swapped], "no output for instruction 'How did US states get their names?'"),
        (A + ["--outputs", extra], "instruction 'One more question' is not in"),
        (["alpaca_eval", "--outputs", STORIES, "--judge", not_llama, "--output", res], "unsupported architecture"),
        (["pandalm", "--model_a", tmp_path / "nope", "--model_b", STORIES, "--judge", STORIES, "--output", res],
         "nope"),
        (["agreement", "--judge", tmp_path / "no_judge", "--output", res], "no_judge"),
        (["agreement", "--judge", STORIES, "--output", res, "--limit", 0], "--limit must be positive"),
    ]
    for argv, message in cases:
        code, out, err = run_main(*argv)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("judge.py: error:"), (argv, err)
        assert message in lines[0], lines[0]
        assert out == "" and not res.exists() and not any(res.parent.glob(".*")), argv
    # the real entry point: exit code and one line, no traceback
    r = subprocess.run([sys.executable, "eval/judge.py", *A, "--outputs", str(swapped)], cwd=ROOT, text=True,
                       capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not res.exists()
