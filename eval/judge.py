"""
Pairwise judging by a local judge (LLaMA or Mixtral): the paper's long-generation benchmarks (Group II: AlpacaEval,
PandaLM), each under its own protocol, and how far to trust the judge.

    python eval/judge.py alpaca_eval --outputs plw01_outputs.json --judge Mixtral-8x7B-Instruct --output plw01_ae.json
    python eval/judge.py alpaca_eval --outputs out/plw01 --judge Mixtral-8x7B-Instruct --output plw01_ae.json \\
        --save_outputs plw01_outputs.json        # a model directory: its 805 completions are generated first
    python eval/judge.py pandalm --model_a out/plw01 --model_b base_pandalm.json --judge PandaLM-7B --output pl.json
    python eval/judge.py agreement --judge PandaLM-7B --output agreement.json
    (every command: --limit N for a quick run on the first N records; --device, --dtype, --batch_size)

alpaca_eval follows AlpacaEval 1.0's annotator alpaca_eval_gpt4 (its prompt, one order per instruction switched as
alpaca_eval seeds it, no ties, unparsed verdicts dropped, win rate and standard error as alpaca_eval computes them);
pandalm and agreement follow PandaLM's pipeline (its prompt, 4 beams with a repetition penalty of 1.2, candidate 1 as
Response 1, judged once). --annotator pandalm_both_orders / --both_orders keep the project's earlier variant.

What is matched detail by detail, the output fields and why it is fast: docs/evaluation.md.
"""
import argparse
import ast
import json
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from checkpoint import checkpoint_files, read_args
from eval.generate import (BENCHMARKS, DTYPES, EVAL_DATA, complete, generate_outputs, length_stats,
                           load_model_and_tokenizer, load_prompts)
from tokenizer import Tokenizer, resolve as resolve_tokenizer
from util import DataError, check_writable, cli, write_json

REFERENCES = {"text_davinci_003": BENCHMARKS["alpaca_eval"],  # AlpacaEval 1.0's reference
              "gpt4_1106_preview": EVAL_DATA / "alpaca_eval" / "gpt4_1106_preview_outputs.json"}  # 2.0's
PANDALM_INSTRUCTIONS = BENCHMARKS["pandalm"]
PANDALM_HUMAN = EVAL_DATA / "pandalm" / "testset-v1.json"
VERDICT_ROOM = 16  # judge tokens a prompt must leave free; the verdict line is a couple of tokens
# PandaLM's decoding (pandalm/utils/pandalm_inference.py: GenerationConfig(num_beams=4, early_stopping=True,
# repetition_penalty=1.2), max_new_tokens=512; temperature, top_p and top_k are set there but unused without sampling),
# under the beam scorer of transformers 4.28.1, the version its requirements.txt pins
PANDALM_DECODING = {"num_beams": 4, "early_stopping": True, "repetition_penalty": 1.2, "beam_scorer": "4.28"}
PANDALM_MAX_NEW_TOKENS = 512

# -----------------------------------------------------------------------------
# PandaLM's prompt and verdict (pandalm/utils/pandalm_inference.py)

SPECIAL = re.compile(r"<unk>|<pad>|<s>|</s>|\[PAD\]|<\|endoftext\|>|\[UNK\]|\[CLS\]|\[MASK\]|<\|startofpiece\|>"
                     r"|<\|endofpiece\|>|\[gMASK\]|\[sMASK\]")


def clean(text):
    return SPECIAL.sub("", text.strip()).strip()


def pandalm_prompt(instruction, input, response1, response2):
    rsp = f"### Response 1:\n{clean(response1)}\n\n### Response 2:\n{clean(response2)}"
    if input:
        return ("Below are two responses for a given task. The task is defined by the Instruction with an Input that "
                "provides further context. Evaluate the responses and generate a reference answer for the task.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n{rsp}\n\n### Evaluation:\n")
    return ("Below are two responses for a given task. The task is defined by the Instruction. Evaluate the responses "
            f"and generate a reference answer for the task.\n\n### Instruction:\n{instruction}\n\n{rsp}\n\n"
            "### Evaluation:\n")


def parse_verdict(text):
    """(verdict, parsed): 1 or 2 for that response, 0 for a tie; parsed False when the first line is neither."""
    first = clean(text).split("\n")[0]
    if first in ("1", "2"):
        return int(first), True
    return 0, first.lower() == "tie"


def judge_bos_id(path, tok):
    """The BOS id HF's LlamaTokenizer (slow, as PandaLM trained with) prepends for the judge at `path`: the id of the
    bos_token its special_tokens_map.json (else tokenizer_config.json) names, else the tokenizer's own <s>.
    PandaLM-7B's names "</s>" (id 2): PandaLM's training code (pandalm/core/nets.py) set bos_token to "</s>", so
    every sequence it trained on starts with id 2."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = Path(path) / name
        if not f.is_file():
            continue
        try:
            bos = json.loads(f.read_text()).get("bos_token")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{f} is not a JSON object: {e}") from None
        bos = bos.get("content") if isinstance(bos, dict) else bos
        if isinstance(bos, str):
            i = tok.sp.piece_to_id(bos)
            if i == tok.unk_id and bos != tok.id_to_piece(tok.unk_id):
                raise ValueError(f"{f}: bos_token {bos!r} is not a piece of {tok.path}")
            return i
    return tok.bos_id


def fit(tok, limit, build, r1, r2, prep=lambda r: r):
    """build(r1, r2) -> prompt ids, in at most `limit` tokens: (ids, truncated), ids None when even empty responses do
    not fit. Responses (as prep leaves them) are cut at their ends to a common token cap, so the longer loses first."""
    ids = build(r1, r2)
    if len(ids) <= limit:
        return ids, False
    t1, t2 = tok.encode(prep(r1)), tok.encode(prep(r2))
    over, cap = len(ids) - limit, max(len(t1), len(t2))
    while cap > 0:
        while cap > 0 and (len(t1) - min(len(t1), cap)) + (len(t2) - min(len(t2), cap)) < over:
            cap -= 1
        ids = build(tok.decode(t1[:cap]), tok.decode(t2[:cap]))
        if len(ids) <= limit:
            return ids, True
        over += len(ids) - limit  # re-encoding at the cut may not save exactly the tokens cut: cut more
    return None, True


def fit_prompt(tok, limit, instruction, input, r1, r2, bos=None):
    """[BOS] + tokens of PandaLM's judge prompt in at most `limit` tokens (fit); bos: the BOS id (default the
    tokenizer's)."""
    head = [tok.bos_id if bos is None else bos]
    return fit(tok, limit, lambda a, b: head + tok.encode(pandalm_prompt(instruction, input, a, b)), r1, r2, clean)


def for_a(verdict, a_first):
    """A verdict (1, 2, 0 = tie) seen from response A: +1 prefers A, -1 prefers B, 0 tie."""
    first = {1: 1, 2: -1, 0: 0}[verdict]
    return first if a_first else -first


def outcome(score):
    return "win" if score > 0 else "lose" if score < 0 else "tie"


def combine(v_ab, v_ba):
    """A's result over both orders: v_ab judges (A, B), v_ba judges (B, A); "win", "tie" or "lose"."""
    return outcome(for_a(v_ab, True) + for_a(v_ba, False))


def judge_pairs(pairs, tok, ctx, run, bos=None, both_orders=True):
    """Judge every pair (instruction, input, response_a, response_b) with PandaLM's prompt: A as Response 1 (PandaLM's
    protocol), and with both_orders also B as Response 1. run(prompt_ids) -> generated texts, one per prompt (the
    judge model); bos: the judge's BOS id. Returns one sample per pair."""
    limit = ctx - VERDICT_ROOM
    orders = ("ab", "ba") if both_orders else ("ab",)
    prompts, fitted = [], []
    for ins, inp, a, b in pairs:
        for r1, r2 in ((a, b), (b, a))[:len(orders)]:
            ids, cut = fit_prompt(tok, limit, ins, inp, r1, r2, bos)
            fitted.append((ids, cut))
            if ids is not None:
                prompts.append(ids)
    texts = iter(run(prompts)) if prompts else iter(())
    samples = []
    for k, (ins, inp, a, b) in enumerate(pairs):
        s = {"instruction": ins, **({"input": inp} if inp else {}), "response_a": a, "response_b": b,
             "truncated": False, "too_long": False}
        for order, (ids, cut) in zip(orders, fitted[len(orders) * k: len(orders) * (k + 1)]):
            if ids is None:  # not judged: a tie
                s["too_long"] = True
                s[f"judge_{order}"], s[f"verdict_{order}"], s[f"parsed_{order}"] = "", 0, False
            else:
                s["truncated"] |= cut
                s[f"judge_{order}"] = next(texts)
                s[f"verdict_{order}"], s[f"parsed_{order}"] = parse_verdict(s[f"judge_{order}"])
        s["result"] = (combine(s["verdict_ab"], s["verdict_ba"]) if both_orders
                       else outcome(for_a(s["verdict_ab"], True)))
        samples.append(s)
    return samples


def tally(samples):
    """Win / tie / lose counts of A (over both orders when the samples have them), the win rate (ties half) and the
    judge's diagnostics."""
    n = len(samples)
    both = bool(samples) and "verdict_ba" in samples[0]
    c = Counter(s["result"] for s in samples)
    out = {"n": n, "wins": c["win"], "ties": c["tie"], "losses": c["lose"], "win_rate": (c["win"] + c["tie"] / 2) / n}
    if both:
        first = Counter(outcome(for_a(s["verdict_ab"], True)) for s in samples)  # the (A, B) order alone
        out["win_rate_a_first"] = (first["win"] + first["tie"] / 2) / n
        out["consistency"] = sum(for_a(s["verdict_ab"], True) == for_a(s["verdict_ba"], False) for s in samples) / n
    orders = ("ab", "ba") if both else ("ab",)
    out["unparsed"] = sum(not s[f"parsed_{o}"] for s in samples for o in orders)  # of n (both orders: 2n) verdicts
    out["judgements"] = n * len(orders)
    out.update(truncated=sum(s["truncated"] for s in samples), too_long=sum(s["too_long"] for s in samples))
    return out


# -----------------------------------------------------------------------------
# AlpacaEval 1.0's annotator, alpaca_eval_gpt4 (alpaca_eval 0.6.6: evaluators_configs/alpaca_eval_gpt4/configs.yaml,
# annotators/pairwise_evaluator.py, processors.py, completion_parsers.py, metrics/helpers.py)

ALPACA_EVAL_PROMPT = Path(__file__).resolve().parent / "prompts" / "alpaca_eval_gpt4.txt"  # verbatim, Apache-2.0
ALPACA_EVAL_MAX_NEW_TOKENS = 100  # its configs.yaml: max_tokens 100, temperature 0 (greedy here)
ALPACA_EVAL_SEED = 0  # the annotator's seed: PairwiseAnnotator's default, passed down to its processors
CHAT_FORMATS = ("mixtral", "raw")


def alpaca_eval_messages(template, instruction, output_1, output_2):
    """[(role, content)] of the annotator prompt: alpaca_eval's make_prompts (each {field} replaced once, in the
    template's order, text already inserted included) then prompt_to_chatml (split at <|im_start|>, the role is the
    first line, the content up to <|im_end|>, both stripped)."""
    text = template
    for field, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        text = text.replace("{" + field + "}", str(value), 1)
    messages = []
    for part in text.strip().split("<|im_start|>")[1:]:
        role, content = part.split("\n", 1)
        messages.append((role.strip(), content.split("<|im_end|>", 1)[0].strip()))
    return text, messages


def render_chat(text, messages, chat_format):
    """The judge's input text. mixtral: Mixtral-Instruct's [INST] turn with the system message before the user's,
    as Mistral's chat templates fold it in ("[INST] {system}\n\n{user} [/INST]"); raw: the formatted template as
    it is, chat markers included (what alpaca_eval's huggingface_local_completions hands a local model)."""
    if chat_format == "raw":
        return text
    system = "\n\n".join(c for r, c in messages if r == "system")
    user = "\n\n".join(c for r, c in messages if r != "system")
    return f"[INST] {system}\n\n{user} [/INST]" if system else f"[INST] {user} [/INST]"


def is_switched(instruction, seed=ALPACA_EVAL_SEED):
    """RandomSwitchTwoColumnsProcessor's coin: random.Random(switch column name + instruction + seed) choosing from
    [False, True]; True puts the model's output first (as output_1)."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def parse_ranking(text):
    """ranking_parser: the rank (1 or 2) the completion, read as a Python literal, gives model_1; None when unparsed
    (an empty completion, not a literal, no model_1 entry, a rank other than 1 or 2)."""
    try:
        rank = [c for c in ast.literal_eval(text) if c["model"] == "model_1"][0]["rank"]
    except Exception:  # alpaca_eval catches everything here, and so do we: any failure is "unparsed"
        return None
    return int(rank) if rank in (1, 2) else None


def annotate(records, tok, ctx, run, bos=None, chat_format="mixtral", template=None,
             room=ALPACA_EVAL_MAX_NEW_TOKENS):
    """AlpacaEval's annotation of records (instruction, reference output, model output): output_1 is the reference,
    output_2 the model, as alpaca_eval's evaluate() passes them; identical outputs get preference 1.5 unjudged; the
    others are switched or not by is_switched and judged once; preference 1 (reference), 2 (model) or None
    (unparsed, dropped later). run(prompt_ids) -> texts; a prompt is fitted into ctx - room tokens (room: the judge's
    max_new_tokens), or not judged at all (too_long, dropped like an unparsed one)."""
    template = template if template is not None else ALPACA_EVAL_PROMPT.read_text()
    head = [tok.bos_id if bos is None else bos]
    samples, prompts = [], []
    for ins, ref, out in records:
        s = {"instruction": ins, "output_1": ref, "output_2": out, "switched": is_switched(ins), "truncated": False,
             "too_long": False, "judge": None, "preference": 1.5 if ref == out else None}
        if ref != out:
            def build(o1, o2):
                text, messages = alpaca_eval_messages(template, ins, o1, o2)
                return head + tok.encode(render_chat(text, messages, chat_format))
            first, second = (out, ref) if s["switched"] else (ref, out)
            ids, cut = fit(tok, ctx - room, build, first, second)
            s["too_long"], s["truncated"] = ids is None, cut and ids is not None
            if ids is not None:
                prompts.append(ids)
        samples.append(s)
    texts = iter(run(prompts)) if prompts else iter(())
    for s in samples:
        if s["preference"] is None and not s["too_long"]:
            s["judge"] = next(texts)
            rank = parse_ranking(s["judge"])
            s["preference"] = None if rank is None else 3 - rank if s["switched"] else rank
    return samples


def win_rate(preferences):
    """alpaca_eval's win rate of output_2 (AbsoluteScoringRule.describe_head2head): preferences (1, 2, 1.5 or None)
    minus 1, the None ones dropped; win_rate the mean, standard_error the standard error of the mean (pandas' sem,
    ddof 1), both as fractions (alpaca_eval prints them x 100). None where there is nothing (or one value) to
    average."""
    p = [x - 1 for x in preferences if x is not None]
    n = len(p)
    mean = sum(p) / n if n else None
    sem = math.sqrt(sum((x - mean) ** 2 for x in p) / (n - 1) / n) if n > 1 else None
    return {"win_rate": mean, "standard_error": sem, "n_wins": sum(x > 0.5 for x in p),
            "n_wins_base": sum(x < 0.5 for x in p), "n_draws": sum(x == 0.5 for x in p), "n_total": n}


def alpaca_eval_tally(samples):
    out = win_rate([s["preference"] for s in samples])
    judged = [s for s in samples if s["judge"] is not None]
    out.update(n=len(samples), unparsed=sum(s["preference"] is None for s in judged), judged=len(judged),
               identical=sum(s["output_1"] == s["output_2"] for s in samples),
               switched=sum(s["switched"] for s in judged), truncated=sum(s["truncated"] for s in samples),
               too_long=sum(s["too_long"] for s in samples))
    return out


def agreement_metrics(pred, gold):
    """Accuracy and per-class precision / recall / F1 over the classes tie (0), 1, 2, and their macro means (a class
    never predicted has precision 0, as sklearn's zero_division=0)."""
    out = {"n": len(gold), "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold), "per_class": {}}
    for c, name in ((0, "tie"), (1, "1"), (2, "2")):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        n_pred, n_gold = sum(p == c for p in pred), sum(g == c for g in gold)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_gold if n_gold else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out["per_class"][name] = {"precision": prec, "recall": rec, "f1": f1, "support": n_gold, "predicted": n_pred}
    for m in ("precision", "recall", "f1"):
        out[m] = sum(v[m] for v in out["per_class"].values()) / 3
    return out

# -----------------------------------------------------------------------------
# data


def short(text, n=60):
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")


def load_outputs(path):
    """model_outputs records (instruction, output, optional input), in file order, keyed by (instruction, input)."""
    by_key = {}
    for i, r in enumerate(load_prompts(path)):
        if not isinstance(r.get("output"), str):
            raise DataError(f"{path}: record {i} has no string field 'output'")
        key = (r["instruction"], r.get("input", ""))
        if key in by_key:
            raise DataError(f"{path}: instruction {short(key[0])} appears twice (record {i})")
        by_key[key] = r
    return by_key


def match(outputs, path, wanted, source, complete_set):
    """The output texts for the wanted (instruction, input) keys, in order; DataError naming the first instruction
    that is missing (or, when complete_set, the first one that is extra)."""
    for key in wanted:
        if key not in outputs:
            raise DataError(f"{path}: no output for instruction {short(key[0])} of {source}")
    if complete_set and len(outputs) != len(wanted):
        extra = next(k for k in outputs if k not in set(wanted))
        raise DataError(f"{path}: instruction {short(extra[0])} is not in {source}")
    return [outputs[k]["output"] for k in wanted]


def check_model_dir(path):
    """Refuse a directory that is not an HF LLaMA checkpoint with a tokenizer, in one line, before any long work."""
    path = Path(path)
    read_args(path)
    checkpoint_files(path)
    resolve_tokenizer(path)  # tokenizer.model at the top or in original/ (LLaMA 3)


def check_judge(path):
    check_model_dir(path)
    judge_bos_id(path, Tokenizer(path))


def outputs_or_model(path, wanted, source, complete_set):
    """A model_outputs file, matched against `wanted`, or a model directory (checked, generated from later)."""
    if Path(path).is_dir():
        check_model_dir(path)
        return None
    return match(load_outputs(path), path, wanted, source, complete_set)

# -----------------------------------------------------------------------------
# models


def release(model):
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_for(path, records, args):
    """model_outputs rows and length stats of the model at `path` on records (greedy, Stanford template)."""
    model, tok = load_model_and_tokenizer(path, args.device, args.dtype)
    rows, stats = generate_outputs(model, tok, records, Path(path).resolve().name, args.max_new_tokens,
                                   args.batch_size)
    release(model)
    return rows, stats


def judge_decoding(args, protocol):
    """(max_new_tokens, model.generate settings) of the judge under a protocol; --greedy and --judge_max_new_tokens
    override them."""
    if protocol == "alpaca_eval_gpt4":
        n, decoding = ALPACA_EVAL_MAX_NEW_TOKENS, {}
    else:
        n, decoding = PANDALM_MAX_NEW_TOKENS, ({} if getattr(args, "greedy", False) else dict(PANDALM_DECODING))
    return args.judge_max_new_tokens or n, decoding


def run_judge(args, protocol, judge_fn):
    """Load the judge and call judge_fn(tok, ctx, run, bos, max_new_tokens) with run(prompt_ids) -> texts, the
    judge's batched KV-cache generation under the protocol's decoding. Returns (judge_fn's result, tok)."""
    judge, tok = load_model_and_tokenizer(args.judge, args.device, args.dtype)
    bos = judge_bos_id(args.judge, tok)
    n, decoding = judge_decoding(args, protocol)

    def run(prompts):
        return [c["text"] for c in complete(judge, tok, prompts, n, args.batch_size, decoding=decoding)]

    out = judge_fn(tok, judge.args.max_seq_len, run, bos, n)
    release(judge)
    return out, tok

# -----------------------------------------------------------------------------
# commands


def cmd_alpaca_eval(args):
    args.reference = REFERENCES.get(args.reference, args.reference)
    reference = load_outputs(args.reference)
    keys = list(reference)[:args.limit]
    outputs = outputs_or_model(args.outputs, keys, args.reference, args.limit is None)
    check_writable(args.output)
    if args.save_outputs:
        if outputs is not None:
            raise ValueError(f"--save_outputs: --outputs {args.outputs} is a file, not a model directory")
        check_writable(args.save_outputs)
    check_judge(args.judge)
    res, rows = {}, None
    if outputs is None:  # generate: the reference records are the prompts (their "output" is not used)
        rows, stats = generate_for(args.outputs, [reference[k] for k in keys], args)
        outputs = [r["output"] for r in rows]
        res["hit_max_new_tokens"] = stats["hit_max_new_tokens"]
    refs = [reference[k]["output"] for k in keys]
    if args.annotator == "alpaca_eval_gpt4":
        samples, tok = run_judge(args, args.annotator, lambda tok, ctx, run, bos, n: annotate(
            [(i, a, b) for (i, _), a, b in zip(keys, refs, outputs)], tok, ctx, run, bos, args.chat_format, room=n))
        res = {**alpaca_eval_tally(samples), **length_stats(tok, outputs), **res}
    else:  # the project's earlier variant: PandaLM's prompt and decoding, both orders, A = the model
        samples, tok = run_judge(args, args.annotator, lambda tok, ctx, run, bos, n: judge_pairs(
            [(i, x, a, b) for (i, x), a, b in zip(keys, outputs, refs)], tok, ctx, run, bos))
        res = {**tally(samples), **length_stats(tok, outputs), **res}
    ref_len = length_stats(tok, refs)
    res.update(reference_length_tokens=ref_len["length_tokens"], reference_length_words=ref_len["length_words"])
    if rows is not None and args.save_outputs:
        write_json(args.save_outputs, rows)
    return {"alpaca_eval": res}, {"outputs": str(args.outputs), "reference": str(args.reference),
                                  "annotator": args.annotator, "chat_format": args.chat_format}, samples


def cmd_pandalm(args):
    records = load_prompts(args.instructions)[:args.limit]
    keys = [(r["instruction"], r.get("input", "")) for r in records]
    sides = {s: outputs_or_model(getattr(args, f"model_{s}"), keys, args.instructions, args.limit is None)
             for s in "ab"}
    check_writable(args.output)
    check_judge(args.judge)
    res = {}
    for s in "ab":
        if sides[s] is None:
            rows, stats = generate_for(getattr(args, f"model_{s}"), records, args)
            sides[s] = [r["output"] for r in rows]
            res[f"hit_max_new_tokens_{s}"] = stats["hit_max_new_tokens"]
    pairs = [(i, x, a, b) for (i, x), a, b in zip(keys, sides["a"], sides["b"])]
    samples, tok = run_judge(args, "pandalm", lambda tok, ctx, run, bos, n: judge_pairs(
        pairs, tok, ctx, run, bos, args.both_orders))
    res = {**tally(samples), **res}
    for s in "ab":
        stats = length_stats(tok, sides[s])
        res[f"length_tokens_{s}"], res[f"length_words_{s}"] = stats["length_tokens"], stats["length_words"]
    return {"pandalm": res}, {"model_a": str(args.model_a), "model_b": str(args.model_b),
                              "instructions": str(args.instructions), "both_orders": args.both_orders}, samples


def human_labels(path, records):
    """The majority of annotator1..3 per record (0 = tie, 1, 2); DataError when a record has none."""
    gold = []
    for i, r in enumerate(records):
        votes = [r.get(f"annotator{j}") for j in (1, 2, 3)]
        if any(v not in (0, 1, 2) for v in votes):
            raise DataError(f"{path}: record {i} needs annotator1..3 each 0, 1 or 2, got {votes}")
        label, count = Counter(votes).most_common(1)[0]
        if count < 2:
            raise DataError(f"{path}: record {i} has no majority label ({votes})")
        gold.append(label)
    return gold


def cmd_agreement(args):
    records = load_prompts(args.data)[:args.limit]
    for i, r in enumerate(records):
        for f in ("response1", "response2"):
            if isinstance(r.get(f), bool):  # 6 responses of testset-v1.json are JSON true: the answer "True"
                r[f] = str(r[f])
            elif not isinstance(r.get(f), str):
                raise DataError(f"{args.data}: record {i} has no string field {f!r}")
    gold = human_labels(args.data, records)
    check_writable(args.output)
    check_judge(args.judge)
    pairs = [(r["instruction"], r.get("input", ""), r["response1"], r["response2"]) for r in records]
    samples, _ = run_judge(args, "pandalm", lambda tok, ctx, run, bos, n: judge_pairs(
        pairs, tok, ctx, run, bos, args.both_orders))
    for s, g in zip(samples, gold):
        s["human"] = g
    res = {**agreement_metrics([s["verdict_ab"] for s in samples], gold), "judge": tally(samples)}
    if args.both_orders:
        res["both_orders"] = agreement_metrics([{"win": 1, "lose": 2, "tie": 0}[s["result"]] for s in samples], gold)
    return {"agreement": res}, {"data": str(args.data), "both_orders": args.both_orders}, samples


def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"


def report(command, res):
    """The few lines printed on stdout."""
    r = res[command]
    if command == "agreement":
        j = r["judge"]
        lines = [f"agreement with humans on {r['n']} pairs: accuracy {pct(r['accuracy'])}, precision "
                 f"{pct(r['precision'])}, recall {pct(r['recall'])}, F1 {pct(r['f1'])} (PandaLM's order)"]
        if "both_orders" in r:
            b = r["both_orders"]
            lines.append(f"both orders: accuracy {pct(b['accuracy'])}, F1 {pct(b['f1'])}, consistency "
                         f"{100 * j['consistency']:.1f}%")
        lines.append(f"judge: {j['unparsed']} unparsed of {j['judgements']}, {j['truncated']} truncated")
        return "\n".join(lines)
    if "standard_error" in r:  # AlpacaEval's annotator
        lines = [f"{command}: win rate {pct(r['win_rate'])}% +- {pct(r['standard_error'])} (standard error; "
                 f"{r['n_wins']} win / {r['n_draws']} draw / {r['n_wins_base']} lose of {r['n_total']} kept), "
                 f"{r['unparsed']} unparsed of {r['judged']} judged and {r['too_long']} too long (dropped), "
                 f"{r['identical']} identical (draws), {r['truncated']} truncated"]
    else:
        orders = "both orders" if "consistency" in r else "A as Response 1"
        lines = [f"{command}: win rate {pct(r['win_rate'])}% ({r['wins']} win / {r['ties']} tie / {r['losses']} lose "
                 f"of {r['n']}, {orders}), {r['unparsed']} unparsed of {r['judgements']}, {r['truncated']} truncated, "
                 f"{r['too_long']} too long" + (f", consistency {100 * r['consistency']:.1f}%" if "consistency" in r
                                                else "")]
    if command == "alpaca_eval":
        lines.append(f"length: {r['length_tokens']:.1f} tokens, {r['length_words']:.1f} words (reference "
                     f"{r['reference_length_tokens']:.1f} tokens, {r['reference_length_words']:.1f} words)")
    else:
        lines.append(f"length: A {r['length_tokens_a']:.1f} tokens, {r['length_words_a']:.1f} words; "
                     f"B {r['length_tokens_b']:.1f} tokens, {r['length_words_b']:.1f} words")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Pairwise judging by a local judge under AlpacaEval's and PandaLM's "
                                            "protocols.")
    sub = p.add_subparsers(dest="command", required=True)
    cmds = {"alpaca_eval": sub.add_parser("alpaca_eval", help="model outputs vs AlpacaEval's reference outputs"),
            "pandalm": sub.add_parser("pandalm", help="model A vs model B on PandaLM's 170 test instructions"),
            "agreement": sub.add_parser("agreement", help="the judge vs PandaLM's 999 human-labelled pairs")}
    for q in cmds.values():
        q.add_argument("--judge", required=True, help="HF LLaMA or Mixtral directory of the judge")
        q.add_argument("--output", required=True, help="results JSON to write")
        q.add_argument("--limit", type=int, help="only the first N records (quick runs)")
        q.add_argument("--judge_max_new_tokens", type=int, help="judge generation limit (default: the protocol's, "
                       "PandaLM 512, alpaca_eval_gpt4 100)")
        q.add_argument("--batch_size", type=int, default=32, help="sequences decoded together (prompts x beams)")
        q.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        q.add_argument("--dtype", choices=list(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    for name in ("alpaca_eval", "pandalm"):
        cmds[name].add_argument("--max_new_tokens", type=int, default=512,
                                help="generation limit of a model given as a directory (default 512)")
    for name in ("pandalm", "agreement"):
        cmds[name].add_argument("--both_orders", action="store_true", help="also judge each pair with B as Response 1 "
                                "and combine the two verdicts (the project's variant, not PandaLM's protocol)")
    for name in ("pandalm", "agreement", "alpaca_eval"):
        cmds[name].add_argument("--greedy", action="store_true", help="PandaLM's prompt decoded greedily instead of "
                                "with PandaLM's 4 beams and repetition penalty 1.2")
    q = cmds["alpaca_eval"]
    q.add_argument("--annotator", choices=["alpaca_eval_gpt4", "pandalm_both_orders"], default="alpaca_eval_gpt4",
                   help="alpaca_eval_gpt4 (default): AlpacaEval 1.0's annotator protocol; pandalm_both_orders: "
                   "PandaLM's prompt, both orders (the project's earlier variant)")
    q.add_argument("--chat_format", choices=CHAT_FORMATS, default="mixtral", help="how alpaca_eval_gpt4's chat "
                   "prompt reaches the judge: mixtral ([INST] ... [/INST], default) or raw (the template text as is)")
    q.add_argument("--outputs", required=True, help="model_outputs JSON, or an HF model directory to generate with")
    q.add_argument("--reference", default="text_davinci_003", help="reference model_outputs JSON, or "
                   "text_davinci_003 (default) / gpt4_1106_preview (data/eval/alpaca_eval: data/fetch.py)")
    q.add_argument("--save_outputs", help="write the generated model_outputs JSON here (with a model directory)")
    q = cmds["pandalm"]
    q.add_argument("--model_a", required=True, help="model_outputs JSON or HF model directory (e.g. fine-tuned)")
    q.add_argument("--model_b", required=True, help="model_outputs JSON or HF model directory (e.g. baseline)")
    q.add_argument("--instructions", default=str(PANDALM_INSTRUCTIONS), help="default: PandaLM's testset-inference-v1")
    cmds["agreement"].add_argument("--data", default=str(PANDALM_HUMAN), help="default: PandaLM's testset-v1.json")
    args = p.parse_args(argv)
    for name in ("limit", "judge_max_new_tokens", "batch_size", "max_new_tokens"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")

    command = {"alpaca_eval": cmd_alpaca_eval, "pandalm": cmd_pandalm, "agreement": cmd_agreement}[args.command]
    results, config, samples = command(args)
    protocol = getattr(args, "annotator", "pandalm")
    n, decoding = judge_decoding(args, protocol)
    config.update(command=args.command, judge=str(args.judge), limit=args.limit, judge_max_new_tokens=n,
                  judge_decoding=decoding or "greedy", max_new_tokens=getattr(args, "max_new_tokens", None),
                  device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    write_json(args.output, {"results": results, "config": config, "samples": samples})
    print(report(args.command, results))
    return 0


if __name__ == "__main__":
    cli(main, "judge.py")
