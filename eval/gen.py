"""
Zero-shot short-generation benchmarks exactly as lm-evaluation-harness 0.4.13 (its `hf` backend) runs them:
truthfulqa_gen and the six gpt3_translation_benchmarks directions (wmt14-en-fr, wmt14-fr-en, wmt16-en-de,
wmt16-de-en, wmt16-en-ro, wmt16-ro-en).

    python eval/gen.py --model out/ --tasks truthfulqa_gen,wmt16-de-en [--data_dir data/eval] \
        [--limit N] [--batch_size 32] [--max_new_tokens 256] [--device cuda] [--dtype bfloat16] --output gen.json

    from eval.gen import evaluate
    out = evaluate(model, tokenizer, ["truthfulqa_gen"], data_dir)   # an in-memory Transformer
    out["results"]["truthfulqa_gen"]["bleu_acc"]

What is matched detail by detail, the output fields and why it is fast: docs/evaluation.md.
"""
import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from eval.bleu import corpus_bleu
from eval.chrf import corpus_chrf
from eval.mc import (HARNESS_VERSION, TRUTHFULQA_QA_PROMPT, check_options, evaluate_model,  # shared with mc
                     model_options)
from eval.rouge import rouge_scores
from eval.ter import corpus_ter
from model import sample
from util import DataError, check_device, check_writable, cli, eval_data_dir, missing_data

MAX_GEN_TOKS = 256  # the harness HFLM's default max_gen_toks; neither task's YAML sets one

# -----------------------------------------------------------------------------
# tasks and prompts

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "ro": "Romanian"}
# WMT task -> (folder under wmt/, test set file stem, source language, target language)
WMT = {
    "wmt14-en-fr": ("en-fr", "newstest2014", "en", "fr"),
    "wmt14-fr-en": ("en-fr", "newstest2014", "fr", "en"),
    "wmt16-en-de": ("en-de", "newstest2016", "en", "de"),
    "wmt16-de-en": ("en-de", "newstest2016", "de", "en"),
    "wmt16-en-ro": ("en-ro", "newstest2016", "en", "ro"),
    "wmt16-ro-en": ("en-ro", "newstest2016", "ro", "en"),
}
TASKS = ["truthfulqa_gen", *WMT]
UNTIL = {"truthfulqa_gen": ["\n\n"], **{t: ["\n"] for t in WMT}}  # the YAMLs' stop strings (truthfulqa: the default)
TRUTHFULQA_METRICS = [f"{m}_{k}" for m in ("bleu", "rouge1", "rouge2", "rougeL") for k in ("max", "acc", "diff")]
WMT_METRICS = ["bleu", "chrf", "ter"]
HEADLINE = {"truthfulqa_gen": "bleu_acc", **{t: "bleu" for t in WMT}}


def check_tasks(tasks):
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(TASKS)}")
    if not tasks:
        raise DataError(f"no tasks given; known tasks: {', '.join(TASKS)}")


def task_files(task, data_dir):
    if task == "truthfulqa_gen":  # the hub's rows (data/fetch.py), else the CSV they were made from (../shared)
        jsonl, csv_file = Path(data_dir) / "truthfulqa" / "generation.jsonl", Path(data_dir) / "truthfulqa" / "TruthfulQA.csv"
        return [csv_file if csv_file.is_file() and not jsonl.is_file() else jsonl]
    folder, stem, src, tgt = WMT[task]
    return [Path(data_dir) / "wmt" / folder / f"{stem}.{lang}" for lang in (src, tgt)]


def format_answers(answers):
    # the harness's process_docs_gen: strip, drop empty ones, end each with a period
    out = []
    for a in answers:
        a = a.strip()
        if a:
            out.append(a if a.endswith(".") else a + ".")
    return out


def truthfulqa_records(path):
    """TruthfulQA.csv -> the HF truthful_qa "generation" records (its loading script: rows without true or false
    answers skipped, answer lists split at ";" and stripped); generation.jsonl (data/fetch.py) holds those records."""
    if Path(path).suffix == ".jsonl":
        return truthfulqa_jsonl(path)
    try:
        return truthfulqa_csv(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def truthfulqa_csv(path):
    records = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.DictReader(f), 1):
            if None in row.values():  # DictReader fills the fields a short row lacks with None
                raise DataError(f"{path}: row {n} has fewer fields than the header")
            try:
                if not row["Correct Answers"] or not row["Incorrect Answers"]:
                    continue
                records.append({
                    "type": row["Type"], "category": row["Category"], "question": row["Question"],
                    "best_answer": row["Best Answer"],
                    "correct_answers": [a.strip() for a in row["Correct Answers"].strip().split(";")],
                    "incorrect_answers": [a.strip() for a in row["Incorrect Answers"].strip().split(";")],
                    "source": row["Source"]})
            except KeyError as e:
                raise DataError(f"{path}: no column {e} (a TruthfulQA.csv has Type, Category, Question, Best Answer, "
                                f"Correct Answers, Incorrect Answers, Source)") from None
    return records


def truthfulqa_jsonl(path):
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = isinstance(r.get("question"), str) and all(
                    isinstance(r.get(k), list) and all(isinstance(a, str) for a in r[k])
                    for k in ("correct_answers", "incorrect_answers"))
            except (json.JSONDecodeError, AttributeError) as e:
                raise DataError(f"{path}:{n}: not a TruthfulQA generation record ({e})") from None
            if not ok:
                raise DataError(f"{path}:{n}: a TruthfulQA generation record needs question, correct_answers and "
                                f"incorrect_answers (lists of strings)")
            records.append(r)
    return records


def truthfulqa_doc(record):
    correct = format_answers(record["correct_answers"])
    if "I have no comment." not in correct:
        correct.append("I have no comment.")
    incorrect = format_answers(record["incorrect_answers"])
    if not incorrect:
        raise ValueError("no non-empty incorrect answer")  # the harness's max over them would fail
    prompt = TRUTHFULQA_QA_PROMPT + "\n\nQ: " + record["question"].strip()
    return {"prompt": prompt, "correct_answers": correct, "incorrect_answers": incorrect}


def wmt_records(task, data_dir):
    """The two aligned files -> HF wmt14/wmt16 records {"translation": {src: ..., tgt: ...}}."""
    folder, stem, src, tgt = WMT[task]
    sides = {}
    for lang, path in zip((src, tgt), task_files(task, data_dir)):
        # split on "\n" only (str.splitlines would also split at U+2028 and friends inside a sentence)
        try:
            sides[lang] = path.read_text(encoding="utf-8").removesuffix("\n").split("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(sides[src]) != len(sides[tgt]):
        a, b = task_files(task, data_dir)
        raise DataError(f"{a} has {len(sides[src])} lines but {b} has {len(sides[tgt])}: they must be aligned")
    return [{"translation": {src: s, tgt: t}} for s, t in zip(sides[src], sides[tgt])]


def wmt_doc(task, record):
    _, _, src, tgt = WMT[task]
    tr = record["translation"]
    prompt = f"{LANGUAGES[src]} phrase: {tr[src]}\n{LANGUAGES[tgt]} phrase:"
    return {"prompt": prompt, "reference": " " + tr[tgt]}  # doc_to_target: ' {{translation[tgt]}}'


def missing(task, path):
    """The one line for a task file that is not there (TruthfulQA: either of its two forms would do)"""
    alt = f", or {path.with_name('TruthfulQA.csv')}" if task == "truthfulqa_gen" else ""
    return missing_data(path, f"task {task}{alt}")


def load_records(task, data_dir):
    for path in task_files(task, data_dir):
        if not path.is_file():
            raise missing(task, path)
    if task == "truthfulqa_gen":
        return truthfulqa_records(task_files(task, data_dir)[0])
    return wmt_records(task, data_dir)


def load_docs(task, data_dir, limit=None):
    """[{doc_id, prompt, correct_answers + incorrect_answers | reference}] for the first `limit` documents."""
    records = load_records(task, data_dir)[:limit]
    docs = []
    for i, r in enumerate(records):
        try:
            doc = truthfulqa_doc(r) if task == "truthfulqa_gen" else wmt_doc(task, r)
        except ValueError as e:
            raise DataError(f"{task} document {i}: {e}") from None
        docs.append({"doc_id": i, **doc})
    if not docs:
        raise DataError(f"{task}: no documents in {', '.join(map(str, task_files(task, data_dir)))}")
    return docs

# -----------------------------------------------------------------------------
# decoding and generation


def hf_decode(tokenizer, ids):
    """The text HF's slow LlamaTokenizer.decode(ids, skip_special_tokens=True) gives (what the harness decodes
    generations with): BOS, EOS and UNK (the harness's pad) are skipped, the first piece loses one leading "▁"
    (HF's own prefix-space handling), and sentencepiece decodes the pieces."""
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id}
    pieces = [tokenizer.id_to_piece(i) for i in ids if i not in special]
    if not pieces:
        return ""
    if pieces[0].startswith("▁"):
        pieces[0] = pieces[0][1:]
    return tokenizer.sp.decode_pieces(pieces)


def cut_at_stops(text, stops):
    for s in stops:  # the harness's postprocess_generated_text: each stop string in turn
        if s:
            text = text.split(s)[0]
    return text


def stop_strings(task, tokenizer):
    return UNTIL[task] + [tokenizer.id_to_piece(tokenizer.eos_id)]  # the harness appends decode(eos), "</s>"


@torch.inference_mode()
def greedy_until(model, contexts, max_new_tokens, eos_id, finished):
    """Greedy decoding of a batch of token lists with a static KV cache, where each row leaves as soon as it ends:
    at EOS, after max_new_tokens, or when finished(i, new_tokens_of_row_i) says so (its text holds a stop string).
    Returns each row's new tokens. The arithmetic is model.generate's (one right-padded prefill, then every row
    decoding at its own position through a mask over the cache); what this adds is the per-row stop test, one host
    sync per token, and dropping finished rows from the batch (the cache is compacted when a quarter of its rows
    have finished, so a batch's cost follows its live rows, not its longest one)."""
    device = model.lm_head.weight.device
    B = len(contexts)
    lens = torch.tensor([len(c) for c in contexts], device=device)
    max_len = max(len(c) for c in contexts)
    total = max_len + max_new_tokens
    tokens = torch.zeros(B, max_len, dtype=torch.long, device=device)
    for b, c in enumerate(contexts):
        tokens[b, :len(c)] = torch.tensor(c, device=device)
    cache = model.make_cache(B, total)
    rows = list(range(B))            # the context each cache row holds
    live = [True] * B
    new = [[] for _ in range(B)]
    pos = lens.clone()               # (rows,) where each row's next token goes
    ar = torch.arange(total, device=device)
    h = model(tokens, cache=cache, return_hidden=True)[torch.arange(B, device=device), lens - 1]    # (B, dim)
    for step in range(max_new_tokens):
        if step:  # feed each row's previous token at its own position pos - 1; keys up to there
            mask = (ar[:max_len + step] < pos[:, None])[:, None, None]                           # (rows, 1, 1, S)
            h = model(nxt[:, None], cache=cache, start_pos=pos - 1, mask=mask, return_hidden=True)[:, 0]
        # on CPU, MKL computes this skinny product faster as (V, dim) @ (dim, rows), as model.generate does
        logits = model.lm_head.weight.mm(h.T).T if h.device.type == "cpu" else model.lm_head(h)
        nxt = sample(logits)                                                                     # greedy (rows,)
        pos += 1
        for j, t in enumerate(nxt.tolist()):
            if live[j]:
                r = rows[j]
                new[r].append(t)
                if t == eos_id or len(new[r]) >= max_new_tokens or finished(r, new[r]):
                    live[j] = False
        n_live = sum(live)
        if n_live == 0:
            break
        if n_live <= 0.75 * len(rows):  # drop the finished rows: every later step costs only the live ones
            keep = torch.tensor([j for j, a in enumerate(live) if a], device=device)
            cache = [(k[keep], v[keep]) for k, v in cache]
            pos, nxt = pos[keep], nxt[keep]
            rows = [rows[j] for j in keep.tolist()]
            live = [True] * len(rows)
    return new


def generate_until(model, tokenizer, prompts, stops, max_gen_toks=MAX_GEN_TOKS, max_length=None, batch_size=32,
                   progress=True, desc="generating", details=False):
    """Greedy continuations of `prompts` (strings), each cut at its first stop string, as the harness's
    HFLM.generate_until returns them. stops: one list of stop strings per prompt (or one list for all).
    details=True: per prompt {"output", "new_tokens", "finish": "stop" | "eos" | "length"} instead of the string.
    Rows are sorted longest first and batched; a row leaves its batch at EOS or as soon as its text holds a stop
    string. The model is used as it is (eval mode is the caller's business)."""
    max_length = max_length or model.args.max_seq_len
    if max_length - max_gen_toks <= 0:
        raise ValueError(f"max_gen_toks {max_gen_toks} must be less than the model's max_length {max_length}")
    if not prompts:
        return []
    if isinstance(stops[0], str):
        stops = [stops] * len(prompts)
    eos = model.args.eos_id if model.args.eos_id is not None else tokenizer.eos_id  # HF generate's eos
    # [BOS] + prompt, then the harness's left truncation to max_length - max_gen_toks tokens
    contexts = [ids[-(max_length - max_gen_toks):] for ids in tokenizer.encode_batch(prompts, bos=True)]
    order = sorted(range(len(prompts)), key=lambda i: -len(contexts[i]))
    results = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="doc", disable=None if progress else True, file=sys.stderr)
    # A stop string that newly appears in the text must end in what the last token added to it: decoding appends
    # a piece's text (or a byte piece's character), it never changes what came before. So the text only needs
    # decoding after a token whose addition can hold a stop string's last character: a byte piece (any character)
    # or a piece with that character in it. Special tokens add nothing.
    pieces = [tokenizer.id_to_piece(i).replace("▁", " ") for i in range(tokenizer.vocab_size)]
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id}
    triggers = {}
    for st in map(tuple, stops):
        if st not in triggers:
            last = {s[-1] for s in st if s}
            triggers[st] = {i for i, piece in enumerate(pieces) if i not in special and
                            (tokenizer.sp.is_byte(i) or any(c in piece for c in last))}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]

        def holds_stop(j, ids):
            st = stops[batch[j]]
            return ids[-1] in triggers[tuple(st)] and any(s in hf_decode(tokenizer, ids) for s in st)

        for i, ids in zip(batch, greedy_until(model, [contexts[i] for i in batch], max_gen_toks, eos, holds_stop)):
            text = hf_decode(tokenizer, ids)
            finish = ("stop" if any(s in text for s in stops[i]) else "eos" if ids and ids[-1] == eos
                      else "length")
            results[i] = {"output": cut_at_stops(text, stops[i]), "new_tokens": len(ids), "finish": finish}
        bar.update(len(batch))
    bar.close()
    return results if details else [r["output"] for r in results]

# -----------------------------------------------------------------------------
# metrics, as the harness's process_results and aggregations compute them


def truthfulqa_doc_metrics(doc, output):
    """The harness's process_results_gen: BLEU and ROUGE of the output against every true and false answer."""
    true_refs, false_refs = doc["correct_answers"], doc["incorrect_answers"]
    refs = true_refs + false_refs
    scores = {"bleu": [corpus_bleu([output], [ref], tokenize="intl") for ref in refs]}
    r = rouge_scores(refs, output)  # each reference on its own, F-measures in 0-1; the harness reports x 100
    for name, key in (("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", "rougeLsum")):
        scores[name] = [100 * s[key] for s in r]
    out = {}
    for name, s in scores.items():
        correct, incorrect = float(nanmax(s[:len(true_refs)])), float(nanmax(s[len(true_refs):]))
        out[f"{name}_max"] = correct
        out[f"{name}_acc"] = int(correct > incorrect)
        out[f"{name}_diff"] = correct - incorrect
    return out


def nanmax(values):
    # np.nanmax: NaNs ignored; all NaN gives NaN
    kept = [v for v in values if not math.isnan(v)]
    return max(kept) if kept else math.nan


def mean(values):
    return sum(values) / len(values)  # the harness's `mean`: a plain sum in document order


def task_results(task, docs, generations):
    outputs = [g["output"] for g in generations]
    samples = [{"doc_id": d["doc_id"], "prompt": d["prompt"], **g} for d, g in zip(docs, generations)]
    if task == "truthfulqa_gen":
        per_doc = [truthfulqa_doc_metrics(d, o) for d, o in zip(docs, outputs)]
        result = {m: mean([p[m] for p in per_doc]) for m in TRUTHFULQA_METRICS}
        for s, p in zip(samples, per_doc):
            s.update(p)
    else:
        refs = [d["reference"] for d in docs]
        result = {"bleu": corpus_bleu(outputs, refs), "chrf": corpus_chrf(outputs, refs),
                  "ter": corpus_ter(outputs, refs)}
        for s, r in zip(samples, refs):
            s["reference"] = r
    result["n"] = len(docs)
    return result, samples

# -----------------------------------------------------------------------------
# the function API


def evaluate(model, tokenizer, tasks, data_dir, limit=None, batch_size=32, max_new_tokens=MAX_GEN_TOKS,
             max_length=None, progress=True):
    """Generate and score `tasks` (names from TASKS) with an in-memory Transformer; returns
    {"results", "samples", "config"}. limit: the first N documents of each task. max_new_tokens: the harness's
    max_gen_toks (256 unless changed, as with --gen_kwargs max_gen_toks=N). max_length: the context window
    (default the model's max_seq_len, i.e. max_position_embeddings, as the harness's)."""
    tasks = list(dict.fromkeys(tasks))
    check_tasks(tasks)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = max_length or model.args.max_seq_len
    if not 1 <= max_length <= model.args.max_seq_len:
        raise ValueError(f"max_length must be between 1 and the model's max_seq_len {model.args.max_seq_len}, "
                         f"got {max_length}")
    if not 1 <= max_new_tokens < max_length:
        raise ValueError(f"max_new_tokens must be at least 1 and less than max_length {max_length}, "
                         f"got {max_new_tokens}")
    if tokenizer.vocab_size > model.args.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.args.vocab_size}")

    t0 = time.time()
    docs = {t: load_docs(t, data_dir, limit) for t in tasks}
    flat = [(t, d) for t in tasks for d in docs[t]]
    was_training = model.training
    model.eval()
    try:  # all tasks in one pass: rows of every task share the batches
        generations = generate_until(model, tokenizer, [d["prompt"] for _, d in flat],
                                     [stop_strings(t, tokenizer) for t, _ in flat], max_new_tokens, max_length,
                                     batch_size, progress=progress, desc="gen " + ",".join(tasks), details=True)
    finally:
        model.train(was_training)
    out = {"results": {}, "samples": {}}
    at = 0
    for t in tasks:
        out["results"][t], out["samples"][t] = task_results(t, docs[t], generations[at:at + len(docs[t])])
        at += len(docs[t])
    device = model.lm_head.weight.device
    out["config"] = {"tasks": tasks, "limit": limit, "max_new_tokens": max_new_tokens, "max_length": max_length,
                     "device": str(device), "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
                     "batch_size": batch_size, "harness_version": HARNESS_VERSION, "headline": HEADLINE,
                     "seconds": round(time.time() - t0, 3)}
    return out


def format_table(results):
    lines = ["| task | n | metric | value |", "|---|---:|---|---:|"]
    for task, r in results.items():
        for m in (TRUTHFULQA_METRICS if task == "truthfulqa_gen" else WMT_METRICS):
            lines.append(f"| {task} | {r['n']} | {m}{' *' if m == HEADLINE[task] else ''} | {r[m]:.4f} |")
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# throughput against the harness (bench.py; needs lm_eval and transformers, test-only dependencies)


def throughput(model_dir, tasks, data_dir, limit=None, batch_size=32, max_new_tokens=MAX_GEN_TOKS, repeats=3,
               device="cpu", tokenizer=None):
    """Time generate_until (ours) against lm-evaluation-harness's HFLM.generate_until on the same requests, in this
    process, on `device` in fp32: one warm-up run of each side (whose outputs are compared), then `repeats` timed
    runs, interleaved; medians. Returns {"documents", "ours_s", "harness_s", "speedup", "identical"} (identical:
    every output string equal). The harness gets the requests its task YAMLs would make (prompt, until, greedy)
    with max_gen_toks = max_new_tokens, and the same batch size. Set torch's thread count before calling."""
    import statistics
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from checkpoint import load_model
    from tokenizer import Tokenizer

    tok = Tokenizer(tokenizer or model_dir)
    model = load_model(model_dir, device=device, dtype=torch.float32)
    hf_tok = transformers.LlamaTokenizer(vocab_file=tok.path, legacy=True)
    lm = HFLM(pretrained=str(model_dir), tokenizer=hf_tok, batch_size=batch_size, device=device, dtype="float32")
    docs = [(t, d) for t in tasks for d in load_docs(t, data_dir, limit)]
    prompts = [d["prompt"] for _, d in docs]
    stops = [stop_strings(t, tok) for t, _ in docs]
    requests = [Instance("generate_until", d, (d["prompt"], {"until": list(UNTIL[t]), "do_sample": False,
                                                             "temperature": 0.0, "max_gen_toks": max_new_tokens}),
                         0, metadata=(t, d["doc_id"], 1)) for t, d in docs]

    sides = {"ours": lambda: generate_until(model, tok, prompts, stops, max_new_tokens, batch_size=batch_size,
                                            progress=False),
             "harness": lambda: lm.generate_until(requests, disable_tqdm=True)}
    outputs = {name: run() for name, run in sides.items()}  # warm-up, and the outputs to compare
    times = {name: [] for name in sides}
    for _ in range(repeats):  # interleaved, so that a burst of load elsewhere slows both sides alike
        for name, run in sides.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    ours_s, harness_s = (statistics.median(times[name]) for name in sides)
    return {"documents": len(docs), "ours_s": ours_s, "harness_s": harness_s, "speedup": harness_s / ours_s,
            "identical": outputs["ours"] == outputs["harness"]}


# -----------------------------------------------------------------------------
# CLI


def main(argv=None):
    p = argparse.ArgumentParser(description=f"Zero-shot short-generation scores, identical to lm-evaluation-harness "
                                            f"{HARNESS_VERSION} (hf backend).")
    model_options(p)
    p.add_argument("--tasks", required=True, help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--data_dir", help="directory with truthfulqa/ and wmt/ (default: $NANOPLW_DATA, else data/eval; "
                   "python data/fetch.py fills it)")
    p.add_argument("--limit", type=int, help="first N documents of each task")
    p.add_argument("--batch_size", type=int, default=32, help="most rows generated together (default 32)")
    p.add_argument("--max_new_tokens", type=int, default=MAX_GEN_TOKS,
                   help=f"the harness's max_gen_toks (default {MAX_GEN_TOKS})")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or str(eval_data_dir())
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    check_tasks(tasks)
    check_options(args, "limit", "batch_size", "max_new_tokens", "max_length")
    check_device(args.device)
    for t in tasks:  # missing data is reported before minutes of model loading
        for path in task_files(t, args.data_dir):
            if not path.is_file():
                raise missing(t, path)
    if args.output:
        check_writable(args.output)
    return evaluate_model(args, tasks, evaluate, format_table, max_new_tokens=args.max_new_tokens)


if __name__ == "__main__":
    cli(main, "gen.py")
