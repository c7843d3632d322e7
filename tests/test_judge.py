"""eval/judge.py: PandaLM's judge prompt and verdict rules (expected strings written out from
pandalm/utils/pandalm_inference.py), PandaLM's single order and the both-order variant, AlpacaEval 1.0's annotator
protocol (prompt, seeded order, ranking parser, win rate and standard error) against alpaca_eval's own code where it is
installed and on hand-made verdicts, agreement metrics against sklearn, the three commands end to end on the
stories260K fixture, on a scripted judge that always answers "1" and on a tiny random Mixtral, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SHARED, STORIES, require
from checkpoint import save_model
from eval.judge import (ALPACA_EVAL_PROMPT, agreement_metrics, alpaca_eval_messages, alpaca_eval_tally, annotate,
                        combine, fit_prompt, human_labels, is_switched, judge_bos_id, judge_pairs, main, pandalm_prompt,
                        parse_ranking, parse_verdict, render_chat, tally, win_rate)
from model import ModelArgs, Transformer
from tokenizer import Tokenizer
from util import cli

EVAL = SHARED / "data" / "eval"


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(STORIES)


@pytest.fixture(scope="module")
def llama_tok():  # decode(encode(text)) == text, runs of spaces included (stories260K's normaliser folds them)
    return Tokenizer(require(SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model"))

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


def test_pandalm_protocol_judges_once_with_a_as_response_1(tok):
    seen = []
    verdicts = iter(["1\n### Reason: x", "2", "Tie", "Response 1"])  # A wins, B wins, a tie, unparsed (a tie)
    samples = judge_pairs(PAIRS, tok, 512, lambda prompts: seen.extend(prompts) or [next(verdicts) for _ in prompts],
                          both_orders=False)
    assert seen == [tok.encode(pandalm_prompt(*p), bos=True) for p in PAIRS]  # one prompt per pair, A first
    assert [s["result"] for s in samples] == ["win", "lose", "tie", "tie"]
    assert all("verdict_ba" not in s for s in samples)
    t = tally(samples)
    assert (t["wins"], t["ties"], t["losses"], t["win_rate"], t["unparsed"], t["judgements"]) == (1, 2, 1, .5, 1, 4)
    assert "consistency" not in t


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
# AlpacaEval 1.0's annotator (alpaca_eval_gpt4)


def test_alpaca_eval_prompt_is_the_annotators():
    template = ALPACA_EVAL_PROMPT.read_text()
    text, messages = alpaca_eval_messages(template, "Name a {output_2} color.", "Red", "Blue\n")
    assert [r for r, _ in messages] == ["system", "user"]
    assert messages[0][1] == "You are a helpful assistant, that ranks models by the quality of their answers."
    user = messages[1][1]
    assert user.startswith("I want you to create a leaderboard of different of large-language models.")
    # each field is replaced once, in the template's order: the instruction's own "{output_2}" is what the third
    # replacement hits (alpaca_eval's make_prompts does the same), so "Blue" lands in the instruction
    assert '"instruction": """Name a Blue\n color.""",' in user and '"answer": """{output_2}"""' in user
    assert user.endswith("Please provide the ranking that the majority of humans would give.")
    assert render_chat(text, messages, "raw") == text
    assert render_chat(text, messages, "mixtral") == f"[INST] {messages[0][1]}\n\n{user} [/INST]"


def test_alpaca_eval_seeded_order_and_parser_equal_alpaca_eval():
    ae = pytest.importorskip("alpaca_eval")
    import pandas as pd
    from alpaca_eval.completion_parsers import ranking_parser
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor
    ref = json.loads(require(EVAL / "alpaca_eval" / "text_davinci_003_outputs.json").read_text())
    df = pd.DataFrame([{"instruction": r["instruction"], "output_1": "a", "output_2": "b"} for r in ref])
    proc = RandomSwitchTwoColumnsProcessor(two_columns_to_switch=["output_1", "output_2"], random_seed_columns=
                                           ["instruction"], _switch_column="is_switched_outputs", seed=0)
    theirs = proc.preprocess(df)["is_switched_outputs"].tolist()
    ours = [is_switched(r["instruction"]) for r in ref]
    assert ours == theirs and 300 < sum(ours) < 500  # all 805 instructions; about half switched
    for text in ["[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]",
                 " [{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]",
                 "[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", "model_1 is better", "",
                 "[{'model': 'model_1', 'rank': 2.0}]", "[{'model': 'model_2', 'rank': 1}]", "{'model': 'model_1'}",
                 "[{'model': 'model_1', 'rank': 1}]\nBecause it is longer."]:
        try:
            expected = ranking_parser(text)[0]
        except ValueError:  # an empty completion raises there; the annotator records no annotation
            expected = float("nan")
        got = parse_ranking(text)
        assert (got is None and expected != expected) or got == expected, text


@pytest.mark.parametrize("text, rank", [
    ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]", 1),
    ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", 2),
    ("[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]", None),
    ("[{'model': 'model_1', 'rank': 1}] and more text", None),   # the whole completion must be the literal
    ("", None), ("Model 1", None),
])
def test_parse_ranking(text, rank):
    assert parse_ranking(text) == rank


def test_alpaca_eval_switch_ties_unparsed_and_standard_error(llama_tok):
    tok = llama_tok
    ins = ["Say hi.", "Count to three.", "Name a fruit.", "Spell cat.", "Describe the sky.", "Write a haiku."]
    # random.Random("is_switched_outputs" + instruction + "0").choices([False, True]), as alpaca_eval 0.6.6 gave them
    assert [is_switched(i) for i in ins] == [False, True, False, True, False, False]
    records = [(i, "reference answer", f"model answer {k}") for k, i in enumerate(ins)]
    records[4] = (ins[4], "same text", "same text")  # identical outputs: a draw, not judged
    asked = []

    def judge(prompts):  # prefers the first answer, except for "Write a haiku." which it cannot parse
        asked.extend(tok.decode(p[1:]) for p in prompts)
        return ["not a ranking" if "haiku" in tok.decode(p) else "[{'model': 'model_1', 'rank': 1}, "
                "{'model': 'model_2', 'rank': 2}]" for p in prompts]

    samples = annotate(records, tok, 2048, judge, chat_format="raw")
    # output_1 is the reference unless switched; the judge always prefers output_1 of its prompt
    assert [s["preference"] for s in samples] == [1, 2, 1, 2, 1.5, None]
    assert len(asked) == 5 and '"answer": """model answer 1"""\n    },\n    {\n        "model": "model_2",\n' \
        '        "answer": """reference answer"""' in asked[1]  # switched: the model's answer first
    assert '"answer": """reference answer"""\n    },\n    {\n        "model": "model_2",\n' \
        '        "answer": """model answer 0"""' in asked[0]
    t = alpaca_eval_tally(samples)
    # preferences - 1 = [0, 1, 0, 1, 0.5] (the unparsed one dropped): mean 0.5, sample sd 0.5, sem 0.5 / sqrt(5)
    assert t["win_rate"] == pytest.approx(0.5) and t["standard_error"] == pytest.approx(0.5 / 5 ** 0.5)
    assert (t["n_wins"], t["n_wins_base"], t["n_draws"], t["n_total"]) == (2, 2, 1, 5)
    assert (t["n"], t["judged"], t["unparsed"], t["identical"], t["switched"]) == (6, 5, 1, 1, 2)
    assert win_rate([None, None])["win_rate"] is None and win_rate([2])["standard_error"] is None


def test_win_rate_equals_alpaca_eval():
    pytest.importorskip("alpaca_eval")
    from alpaca_eval.metrics import pairwise_to_winrate
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 40):
        prefs = [[1, 2, 1.5, None][int(i)] for i in torch.randint(0, 4, (n,), generator=g)] + [1, 2]
        ours = win_rate(prefs)
        theirs = pairwise_to_winrate([float("nan") if p is None else p for p in prefs])
        assert 100 * ours["win_rate"] == pytest.approx(theirs["win_rate"], rel=1e-12)
        assert 100 * ours["standard_error"] == pytest.approx(theirs["standard_error"], rel=1e-12)
        for k in ("n_wins", "n_wins_base", "n_draws", "n_total"):
            assert ours[k] == theirs[k], k


def test_annotation_equals_alpaca_evals_own_annotator(llama_tok, monkeypatch):
    """alpaca_eval's PairwiseAnnotator with the alpaca_eval_gpt4 config, its completions from a scripted judge, against
    annotate() with the same judge: the same prompts, the same preferences, the same win rate and standard error."""
    pytest.importorskip("alpaca_eval")
    import alpaca_eval.annotators.base as ae_base
    from alpaca_eval.annotators import PairwiseAnnotator
    from alpaca_eval.metrics import get_winrate

    def verdict(prompt):  # prefers an answer starting with "good"; cannot be parsed when the first is "garbage"
        first = prompt.split('"answer": """')[1]
        if first.startswith("garbage"):
            return "I prefer model_1."
        r = 1 if first.startswith("good") else 2
        return f"[{{'model': 'model_1', 'rank': {r}}}, {{'model': 'model_2', 'rank': {3 - r}}}]"

    theirs_prompts = []

    def completions(prompts, **kwargs):
        theirs_prompts.extend(prompts)
        return {"completions": [verdict(p) for p in prompts], "price_per_example": [0.0] * len(prompts),
                "time_per_example": [0.0] * len(prompts)}

    monkeypatch.setattr(ae_base, "get_fn_completions", lambda name: completions)
    ref = json.loads(require(EVAL / "alpaca_eval" / "text_davinci_003_outputs.json").read_text())[:24]
    model = [{**r, "output": ["good", "bad", "garbage"][i % 3] + " answer " + str(i), "generator": "m"}
             for i, r in enumerate(ref)]
    model[4]["output"] = ref[4]["output"]  # identical: a draw
    annotations = PairwiseAnnotator(annotators_config="alpaca_eval_gpt4", caching_path=None).annotate_head2head(
        outputs_1=ref, outputs_2=model)
    theirs = {a["instruction"]: a["preference"] for a in annotations}

    ours_prompts = []

    def judge(prompts):
        texts = [llama_tok.decode(p[1:]) for p in prompts]
        ours_prompts.extend(texts)
        return [verdict(t) for t in texts]

    samples = annotate([(r["instruction"], r["output"], m["output"]) for r, m in zip(ref, model)], llama_tok, 4096,
                       judge, chat_format="raw")
    ours = {s["instruction"]: s["preference"] for s in samples}
    assert sorted(ours_prompts) == sorted(theirs_prompts) and len(ours_prompts) == 23
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert (ours[k] is None and theirs[k] != theirs[k]) or ours[k] == theirs[k], k
    w, t = get_winrate(annotations), alpaca_eval_tally(samples)
    assert t["unparsed"] > 0 and t["n_draws"] == 1 and t["switched"] > 0
    assert 100 * t["win_rate"] == pytest.approx(w["win_rate"], rel=1e-12)
    assert 100 * t["standard_error"] == pytest.approx(w["standard_error"], rel=1e-12)
    assert (t["n_wins"], t["n_wins_base"], t["n_draws"], t["n_total"]) == tuple(
        int(w[k]) for k in ("n_wins", "n_wins_base", "n_draws", "n_total"))

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
    # stories260K's 512-token context cannot hold AlpacaEval's annotator prompt: nothing is judged, every pair is
    # dropped as too long, so there is no win rate (test_a_tiny_mixtral_judges_end_to_end judges)
    assert (r["n"], r["judged"], r["too_long"], r["n_total"], r["win_rate"], r["standard_error"]) == \
        (3, 0, 3, 0, None, None)
    assert r["hit_max_new_tokens"] == 1.0 and r["length_tokens"] > 0 and r["length_words"] > 0
    assert d["config"]["annotator"] == "alpaca_eval_gpt4" and d["config"]["judge_max_new_tokens"] == 8
    assert d["config"]["judge_decoding"] == "greedy"
    assert out.startswith("alpaca_eval: win rate n/a% +- n/a") and "0 judged and 3 too long" in out
    rows = json.loads(outs.read_text())  # AlpacaEval's model_outputs format, for an official run elsewhere
    assert [set(x) for x in rows] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert [s["output_2"] for s in d["samples"]] == [x["output"] for x in rows]
    assert [s["switched"] for s in d["samples"]] == [is_switched(x["instruction"]) for x in rows]
    # the saved outputs judged as a file give the same result
    code, _, err = run_main("alpaca_eval", "--outputs", outs, "--judge", STORIES, "--limit", 3,
                            "--output", tmp_path / "ae2.json", "--judge_max_new_tokens", 8, "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "ae2.json").read_text())["results"]["alpaca_eval"] == \
        {k: v for k, v in r.items() if k != "hit_max_new_tokens"}
    # the project's earlier variant, under its own name: PandaLM's prompt, both orders, here greedy
    code, out, err = run_main("alpaca_eval", "--outputs", outs, "--judge", STORIES, "--limit", 3, "--annotator",
                              "pandalm_both_orders", "--greedy", "--output", tmp_path / "ae3.json",
                              "--judge_max_new_tokens", 8, "--device", "cpu")
    assert code == 0, err
    r = json.loads((tmp_path / "ae3.json").read_text())["results"]["alpaca_eval"]
    assert r["n"] == 3 and r["wins"] + r["ties"] + r["losses"] == 3 and r["judgements"] == 6 and "consistency" in r
    assert out.startswith("alpaca_eval: win rate") and "both orders" in out


def test_pandalm_and_agreement_with_a_judge_that_always_says_1(tmp_path):
    require(EVAL / "pandalm" / "testset-v1.json")
    judge = scripted_judge(tmp_path / "judge")
    b = tmp_path / "b.json"
    records = json.loads((EVAL / "pandalm" / "testset-inference-v1.json").read_text())[:3]
    b.write_text(json.dumps([{**r, "output": "baseline answer"} for r in records]))
    # PandaLM's protocol: A as Response 1, judged once with 4 beams: "1" is A's win every time
    code, out, err = run_main("pandalm", "--model_a", STORIES, "--model_b", b, "--judge", judge, "--limit", 3,
                              "--output", tmp_path / "pl.json", "--max_new_tokens", 16, "--device", "cpu")
    assert code == 0, err
    d = json.loads((tmp_path / "pl.json").read_text())
    r = d["results"]["pandalm"]
    assert (r["wins"], r["ties"], r["losses"], r["win_rate"], r["unparsed"], r["judgements"]) == (3, 0, 0, 1, 0, 3)
    assert [s["judge_ab"] for s in d["samples"]] == ["1"] * 3 and "judge_ba" not in d["samples"][0]
    assert d["config"]["judge_decoding"] == {"num_beams": 4, "early_stopping": True, "repetition_penalty": 1.2,
                                             "beam_scorer": "4.28"}
    assert d["config"]["judge_max_new_tokens"] == 512
    assert [s["input"] for s in d["samples"]] == [x["input"] for x in records]
    assert r["length_words_b"] == 2.0 and out.startswith("pandalm: win rate 100.00% (3 win / 0 tie / 0 lose of 3, A")
    # both orders (the project's variant): a judge that always says "1" gives all ties
    code, out, err = run_main("pandalm", "--model_a", STORIES, "--model_b", b, "--judge", judge, "--limit", 3,
                              "--both_orders", "--output", tmp_path / "pl2.json", "--max_new_tokens", 16,
                              "--device", "cpu")
    assert code == 0, err
    d = json.loads((tmp_path / "pl2.json").read_text())
    r = d["results"]["pandalm"]
    assert (r["wins"], r["ties"], r["losses"], r["win_rate"], r["consistency"], r["unparsed"]) == (0, 3, 0, .5, 0, 0)
    assert [(s["judge_ab"], s["judge_ba"]) for s in d["samples"]] == [("1", "1")] * 3

    code, out, err = run_main("agreement", "--judge", judge, "--limit", 3, "--output", tmp_path / "ag.json",
                              "--both_orders", "--device", "cpu")
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
    assert "both_orders" not in d["results"]["agreement"]


def tiny_mixtral_judge(path):
    """A random 2-layer Mixtral (8 experts, top 2) with stories260K's tokenizer, saved by transformers, sharded."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                     num_local_experts=8, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(cfg).save_pretrained(path, max_shard_size="100KB")
    shutil.copy(STORIES / "tokenizer.model", path / "tokenizer.model")
    return path


def test_a_tiny_mixtral_judges_end_to_end(tmp_path):
    require(EVAL / "alpaca_eval" / "text_davinci_003_outputs.json")
    judge = tiny_mixtral_judge(tmp_path / "mixtral")
    outs = tmp_path / "outs.json"
    ref = json.loads((EVAL / "alpaca_eval" / "text_davinci_003_outputs.json").read_text())[:2]
    outs.write_text(json.dumps([{**r, "output": "A short answer."} for r in ref]))
    code, out, err = run_main("alpaca_eval", "--outputs", outs, "--judge", judge, "--limit", 2, "--output",
                              tmp_path / "ae.json", "--judge_max_new_tokens", 6, "--device", "cpu")
    assert code == 0, err
    d = json.loads((tmp_path / "ae.json").read_text())
    assert d["results"]["alpaca_eval"]["judged"] == 2 and all(isinstance(s["judge"], str) for s in d["samples"])
    code, out, err = run_main("pandalm", "--model_a", outs, "--model_b", outs, "--judge", judge, "--limit", 2,
                              "--instructions", outs, "--judge_max_new_tokens", 6, "--output", tmp_path / "pl.json",
                              "--device", "cpu")
    assert code == 0, err
    r = json.loads((tmp_path / "pl.json").read_text())["results"]["pandalm"]
    assert r["n"] == 2 and r["judgements"] == 2

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
