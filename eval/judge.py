"""
Pairwise judging by a local LLaMA judge: the paper's long-generation benchmarks (Group II: AlpacaEval, PandaLM) and
how far to trust the judge.

    python eval/judge.py alpaca_eval --outputs plw01_outputs.json --judge PandaLM-7B --output plw01_ae.json
    python eval/judge.py alpaca_eval --outputs out/plw01 --judge PandaLM-7B --output plw01_ae.json \\
        --save_outputs plw01_outputs.json        # a model directory: its 805 completions are generated first
    python eval/judge.py pandalm --model_a out/plw01 --model_b base_pandalm.json --judge PandaLM-7B --output pl.json
    python eval/judge.py agreement --judge PandaLM-7B --output agreement.json
    (every command: --limit N for a quick run on the first N records; --device, --dtype, --batch_size)

What is matched detail by detail, the output fields and why it is fast: docs/evaluation.md.
"""
import argparse
import json
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


def fit_prompt(tok, limit, instruction, input, r1, r2, bos=None):
    """[BOS] + tokens of the judge prompt in at most `limit` tokens: (ids, truncated), ids None when even empty
    responses do not fit. Responses are cut at their ends to a common token cap, so the longer one loses first.
    bos: the BOS id (default the tokenizer's)."""
    head = [tok.bos_id if bos is None else bos]
    ids = head + tok.encode(pandalm_prompt(instruction, input, r1, r2))
    if len(ids) <= limit:
        return ids, False
    t1, t2 = tok.encode(clean(r1)), tok.encode(clean(r2))
    over, cap = len(ids) - limit, max(len(t1), len(t2))
    while cap > 0:
        while cap > 0 and (len(t1) - min(len(t1), cap)) + (len(t2) - min(len(t2), cap)) < over:
            cap -= 1
        ids = head + tok.encode(pandalm_prompt(instruction, input, tok.decode(t1[:cap]), tok.decode(t2[:cap])))
        if len(ids) <= limit:
            return ids, True
        over += len(ids) - limit  # re-encoding at the cut may not save exactly the tokens cut: cut more
    return None, True


def for_a(verdict, a_first):
    """A verdict (1, 2, 0 = tie) seen from response A: +1 prefers A, -1 prefers B, 0 tie."""
    first = {1: 1, 2: -1, 0: 0}[verdict]
    return first if a_first else -first


def outcome(score):
    return "win" if score > 0 else "lose" if score < 0 else "tie"


def combine(v_ab, v_ba):
    """A's result over both orders: v_ab judges (A, B), v_ba judges (B, A); "win", "tie" or "lose"."""
    return outcome(for_a(v_ab, True) + for_a(v_ba, False))


def judge_pairs(pairs, tok, ctx, run, bos=None):
    """Judge every pair (instruction, input, response_a, response_b) in both orders. run(prompt_ids) -> generated
    texts, one per prompt (the judge model); bos: the judge's BOS id. Returns one sample per pair."""
    limit = ctx - VERDICT_ROOM
    prompts, fitted = [], []
    for ins, inp, a, b in pairs:
        for r1, r2 in ((a, b), (b, a)):
            ids, cut = fit_prompt(tok, limit, ins, inp, r1, r2, bos)
            fitted.append((ids, cut))
            if ids is not None:
                prompts.append(ids)
    texts = iter(run(prompts)) if prompts else iter(())
    samples = []
    for k, (ins, inp, a, b) in enumerate(pairs):
        s = {"instruction": ins, **({"input": inp} if inp else {}), "response_a": a, "response_b": b,
             "truncated": False, "too_long": False}
        for order, (ids, cut) in zip(("ab", "ba"), fitted[2 * k: 2 * k + 2]):
            if ids is None:  # not judged: a tie
                s["too_long"] = True
                s[f"judge_{order}"], s[f"verdict_{order}"], s[f"parsed_{order}"] = "", 0, False
            else:
                s["truncated"] |= cut
                s[f"judge_{order}"] = next(texts)
                s[f"verdict_{order}"], s[f"parsed_{order}"] = parse_verdict(s[f"judge_{order}"])
        s["result"] = combine(s["verdict_ab"], s["verdict_ba"])
        samples.append(s)
    return samples


def tally(samples):
    """Win / tie / lose counts of A over both orders, the win rate (ties half) and the judge's diagnostics."""
    n = len(samples)
    c = Counter(s["result"] for s in samples)
    first = Counter(outcome(for_a(s["verdict_ab"], True)) for s in samples)  # the (A, B) order alone
    return {"n": n, "wins": c["win"], "ties": c["tie"], "losses": c["lose"],
            "win_rate": (c["win"] + c["tie"] / 2) / n,
            "win_rate_a_first": (first["win"] + first["tie"] / 2) / n,
            "consistency": sum(for_a(s["verdict_ab"], True) == for_a(s["verdict_ba"], False) for s in samples) / n,
            "unparsed": sum((not s["parsed_ab"]) + (not s["parsed_ba"]) for s in samples),  # of 2n judgements
            "truncated": sum(s["truncated"] for s in samples), "too_long": sum(s["too_long"] for s in samples)}


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


def run_judge(args, pairs):
    """Load the judge and judge pairs in both orders (batched KV-cache generation)."""
    judge, tok = load_model_and_tokenizer(args.judge, args.device, args.dtype)
    bos = judge_bos_id(args.judge, tok)

    def run(prompts):
        return [c["text"] for c in complete(judge, tok, prompts, args.judge_max_new_tokens, args.batch_size)]

    samples = judge_pairs(pairs, tok, judge.args.max_seq_len, run, bos)
    release(judge)
    return samples, tok

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
    samples, tok = run_judge(args, [(i, x, a, b) for (i, x), a, b in zip(keys, outputs, refs)])
    res = {**tally(samples), **length_stats(tok, outputs), **res}
    ref_len = length_stats(tok, refs)
    res.update(reference_length_tokens=ref_len["length_tokens"], reference_length_words=ref_len["length_words"])
    if rows is not None and args.save_outputs:
        write_json(args.save_outputs, rows)
    return {"alpaca_eval": res}, {"outputs": str(args.outputs), "reference": str(args.reference)}, samples


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
    samples, tok = run_judge(args, [(i, x, a, b) for (i, x), a, b in zip(keys, sides["a"], sides["b"])])
    res = {**tally(samples), **res}
    for s in "ab":
        stats = length_stats(tok, sides[s])
        res[f"length_tokens_{s}"], res[f"length_words_{s}"] = stats["length_tokens"], stats["length_words"]
    return {"pandalm": res}, {"model_a": str(args.model_a), "model_b": str(args.model_b),
                              "instructions": str(args.instructions)}, samples


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
    samples, _ = run_judge(args, [(r["instruction"], r.get("input", ""), r["response1"], r["response2"])
                                  for r in records])
    both = [{"win": 1, "lose": 2, "tie": 0}[s["result"]] for s in samples]
    for s, g in zip(samples, gold):
        s["human"] = g
    res = {**agreement_metrics([s["verdict_ab"] for s in samples], gold),
           "both_orders": agreement_metrics(both, gold), "judge": tally(samples)}
    return {"agreement": res}, {"data": str(args.data)}, samples


def report(command, res):
    """The few lines printed on stdout."""
    r = res[command]
    if command == "agreement":
        b = r["both_orders"]
        return (f"agreement with humans on {r['n']} pairs: accuracy {100 * r['accuracy']:.2f}, precision "
                f"{100 * r['precision']:.2f}, recall {100 * r['recall']:.2f}, F1 {100 * r['f1']:.2f} (given order); "
                f"both orders: accuracy {100 * b['accuracy']:.2f}, F1 {100 * b['f1']:.2f}\n"
                f"judge: {r['judge']['unparsed']} unparsed of {2 * r['n']}, consistency "
                f"{100 * r['judge']['consistency']:.1f}%, {r['judge']['truncated']} truncated")
    lines = [f"{command}: win rate {100 * r['win_rate']:.2f}% ({r['wins']} win / {r['ties']} tie / {r['losses']} lose "
             f"of {r['n']}, both orders), consistency {100 * r['consistency']:.1f}%, {r['unparsed']} unparsed of "
             f"{2 * r['n']}, {r['truncated']} truncated, {r['too_long']} too long"]
    if command == "alpaca_eval":
        lines.append(f"length: {r['length_tokens']:.1f} tokens, {r['length_words']:.1f} words (reference "
                     f"{r['reference_length_tokens']:.1f} tokens, {r['reference_length_words']:.1f} words)")
    else:
        lines.append(f"length: A {r['length_tokens_a']:.1f} tokens, {r['length_words_a']:.1f} words; "
                     f"B {r['length_tokens_b']:.1f} tokens, {r['length_words_b']:.1f} words")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Pairwise judging by a local LLaMA judge with PandaLM's prompt.")
    sub = p.add_subparsers(dest="command", required=True)
    cmds = {"alpaca_eval": sub.add_parser("alpaca_eval", help="model outputs vs AlpacaEval's reference outputs"),
            "pandalm": sub.add_parser("pandalm", help="model A vs model B on PandaLM's 170 test instructions"),
            "agreement": sub.add_parser("agreement", help="the judge vs PandaLM's 999 human-labelled pairs")}
    for q in cmds.values():
        q.add_argument("--judge", required=True, help="HF LLaMA directory of the judge (e.g. PandaLM-7B)")
        q.add_argument("--output", required=True, help="results JSON to write")
        q.add_argument("--limit", type=int, help="only the first N records (quick runs)")
        q.add_argument("--judge_max_new_tokens", type=int, default=512, help="judge generation limit (default 512)")
        q.add_argument("--batch_size", type=int, default=32)
        q.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        q.add_argument("--dtype", choices=list(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    for name in ("alpaca_eval", "pandalm"):
        cmds[name].add_argument("--max_new_tokens", type=int, default=512,
                                help="generation limit of a model given as a directory (default 512)")
    q = cmds["alpaca_eval"]
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
    config.update(command=args.command, judge=str(args.judge), limit=args.limit,
                  judge_max_new_tokens=args.judge_max_new_tokens, max_new_tokens=getattr(args, "max_new_tokens", None),
                  device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    write_json(args.output, {"results": results, "config": config, "samples": samples})
    print(report(args.command, results))
    return 0


if __name__ == "__main__":
    cli(main, "judge.py")
