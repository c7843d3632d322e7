"""
Zero-shot multiple-choice evaluation that reproduces lm-evaluation-harness 0.4.13 (its `hf` backend) exactly,
several times faster.

    python eval/mc.py --model out/ --tasks arc_challenge,piqa,truthfulqa_mc2,winogrande \
        [--data_dir data/eval/hf] [--limit N] [--device cuda] [--dtype bfloat16] [--output mc.json]

    from eval.mc import evaluate
    out = evaluate(model, tokenizer, ["arc_challenge", "mmlu"], data_dir)   # an in-memory Transformer
    out["results"]["mmlu"]["acc"]

What is matched detail by detail, the output fields and why it is fast: docs/evaluation.md.
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import load_model, read_args
from util import (DataError, catch_stop_signals, check_device, check_writable, choose_threads, eval_data_dir,
                  missing_data, report_errors, write_json)
from tokenizer import Tokenizer

HARNESS_VERSION = "0.4.13"


# -----------------------------------------------------------------------------
# prompts: each task turns one document into (contexts, continuations, choices, gold), one entry per choice.
# `choices` are the strings whose character lengths acc_norm divides by; gold is an index (mc2: the 0/1 labels).

TRUTHFULQA_QA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)

# MMLU subjects by the harness's category groups, in the order its `mmlu` group lists them (stem, other,
# social_sciences, humanities) and, within a category, alphabetical (its tag members are sorted by name).
MMLU_CATEGORIES = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning".split(),
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
             "medical_genetics miscellaneous nutrition professional_accounting professional_medicine "
             "virology".split(),
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
                       "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                       "human_sexuality professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy".split(),
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions".split(),
}
MMLU_SUBJECTS = {s for subjects in MMLU_CATEGORIES.values() for s in subjects}


def with_delimiter(choices):
    return [" " + c for c in choices]  # the harness's target_delimiter


def arc(doc):
    choices = doc["choices"]["text"]
    ctx = f"Question: {doc['question']}\nAnswer:"
    return [ctx] * len(choices), with_delimiter(choices), choices, doc["choices"]["label"].index(doc["answerKey"])


def piqa(doc):
    choices = [doc["sol1"], doc["sol2"]]
    return [f"Question: {doc['goal']}\nAnswer:"] * 2, with_delimiter(choices), choices, doc["label"]


def winogrande(doc):
    # partial evaluation: the option goes into the context, the rest of the sentence is what gets scored
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = " " + sentence[blank + 1:].strip()
    return contexts, [continuation] * 2, contexts, {"1": 0, "2": 1}[doc["answer"]]


def hellaswag_clean(text):
    # the harness's hellaswag preprocess, step for step: WikiHow's bracketed markup out, one pass of "  " -> " "
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(doc):
    ctx = hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    choices = [hellaswag_clean(e) for e in doc["endings"]]
    return [ctx] * len(choices), with_delimiter(choices), choices, int(doc["label"])


def truthfulqa_mc1(doc):
    choices = doc["mc1_targets"]["choices"]
    ctx = TRUTHFULQA_QA_PROMPT + "\n\nQ: " + doc["question"] + "\nA:"
    return [ctx] * len(choices), with_delimiter(choices), choices, 0  # the true answer is listed first


def truthfulqa_mc2(doc):
    choices = doc["mc2_targets"]["choices"]
    ctx = TRUTHFULQA_QA_PROMPT + "\n\nQ: " + doc["question"] + "\nA:"
    labels = [int(x) for x in doc["mc2_targets"]["labels"]]
    if len(labels) != len(choices):
        raise ValueError("mc2_targets has different numbers of choices and labels")
    return [ctx] * len(choices), with_delimiter(choices), choices, labels


def boolq(doc):
    ctx = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
    return [ctx] * 2, [" no", " yes"], ["no", "yes"], doc["label"]


def openbookqa(doc):
    choices = doc["choices"]["text"]
    gold = doc["choices"]["label"].index(doc["answerKey"].lstrip())
    return [doc["question_stem"]] * len(choices), with_delimiter(choices), choices, gold


def mmlu(doc):
    subject = doc["subject"]
    if subject not in MMLU_SUBJECTS:
        raise ValueError(f"unknown MMLU subject {subject!r}")
    c = doc["choices"]
    ctx = (f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
           f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
    return [ctx] * 4, [" A", " B", " C", " D"], ["A", "B", "C", "D"], doc["answer"]


# task -> (data file, prompt function, metrics the harness reports: "acc" and "acc_norm", or "mc2")
TASKS = {
    "arc_challenge": ("arc_challenge.jsonl", arc, ("acc", "acc_norm")),
    "arc_easy": ("arc_easy.jsonl", arc, ("acc", "acc_norm")),
    "piqa": ("piqa.jsonl", piqa, ("acc", "acc_norm")),
    "winogrande": ("winogrande.jsonl", winogrande, ("acc",)),
    "hellaswag": ("hellaswag.jsonl", hellaswag, ("acc", "acc_norm")),
    "truthfulqa_mc1": ("truthfulqa_mc.jsonl", truthfulqa_mc1, ("acc",)),
    "truthfulqa_mc2": ("truthfulqa_mc.jsonl", truthfulqa_mc2, ("mc2",)),
    "boolq": ("boolq.jsonl", boolq, ("acc",)),
    "openbookqa": ("openbookqa.jsonl", openbookqa, ("acc", "acc_norm")),
    "mmlu": ("mmlu_test.jsonl", mmlu, ("acc",)),
}


# -----------------------------------------------------------------------------
# documents

def check_tasks(tasks):
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(TASKS)}")
    if not tasks:
        raise DataError(f"no tasks given; known tasks: {', '.join(TASKS)}")


def load_docs(task, data_dir, limit=None):
    """[{doc_id, contexts, continuations, choices, gold, subject?}] for the first `limit` documents
    (mmlu: of each subject, with doc_id counting within the subject, as the harness's mmlu_<subject> tasks do)."""
    filename, prompt, _ = TASKS[task]
    path = Path(data_dir) / filename
    if not path.is_file():
        raise missing_data(path, f"task {task} reads {filename} in the HF-datasets layout")
    docs, per_subject = [], {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit inside a record
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            subject = raw["subject"] if task == "mmlu" else None
            doc_id = per_subject.get(subject, 0)
            if limit is not None and doc_id >= limit:
                if task != "mmlu":
                    break
                continue
            contexts, continuations, choices, gold = prompt(raw)
            golds = gold if isinstance(gold, list) else [gold]
            if not all(isinstance(g, int) and not isinstance(g, bool) for g in golds):
                raise ValueError(f"the answer must be an integer index, got {gold!r}")
            if not isinstance(gold, list) and not 0 <= gold < len(choices):
                raise ValueError(f"answer index {gold} is out of range for {len(choices)} choices")
            if not all(isinstance(s, str) for s in contexts + continuations + choices) or not choices:
                raise ValueError("contexts and choices must be non-empty lists of strings")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path}:{line_no}: not a valid {task} record ({type(e).__name__}: {e})") from None
        per_subject[subject] = doc_id + 1
        doc = {"doc_id": doc_id, "contexts": contexts, "continuations": continuations, "choices": choices,
               "gold": gold}
        if subject is not None:
            doc["subject"] = subject
        docs.append(doc)
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


# -----------------------------------------------------------------------------
# tokens: the harness's TemplateLM._encode_pair, then its truncation

def encode_requests(tokenizer, requests):
    """[(context, continuation)] -> [(context tokens, continuation tokens)], BOS first, exactly as the harness."""
    contexts, wholes = [], []
    for context, continuation in requests:
        if not context:
            raise DataError("empty context (the harness would condition on a lone BOS; no task here does)")
        n = len(context) - len(context.rstrip())  # trailing whitespace belongs to the continuation
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        contexts.append(context)
        wholes.append(context + continuation)
    unique = list(dict.fromkeys(contexts))  # choices share their context: encode it once
    enc = dict(zip(unique, tokenizer.encode_batch(unique, bos=True)))
    out = []
    for context, whole_enc in zip(contexts, tokenizer.encode_batch(wholes, bos=True)):
        ctx_enc = enc[context]
        cont_enc = whole_enc[len(ctx_enc):]  # split the whole string's tokens at the context's length
        if not cont_enc:
            raise DataError(f"a continuation encodes to no tokens after context {context[-40:]!r}")
        out.append((ctx_enc, cont_enc))
    return out


def pack(xs, conts):
    """Model inputs x_i of one document's choices -> one packed row.

    The longest common prefix of the x_i is laid out once, then each choice's remainder; positions restart after
    the prefix for every choice, so each choice sees exactly its x_i. Returns tokens, positions, segment ids
    (0 = shared prefix, i + 1 = choice i), and per choice the row indices whose next-token predictions are
    scored plus the target tokens.
    """
    p = 0
    while p < min(map(len, xs)) and all(x[p] == xs[0][p] for x in xs):
        p += 1
    tokens, positions, segments = list(xs[0][:p]), list(range(p)), [0] * p
    scored = []
    for i, (x, cont) in enumerate(zip(xs, conts)):
        start = len(tokens)  # where this choice's own tokens begin in the row
        tokens += x[p:]
        positions += range(p, len(x))
        segments += [i + 1] * (len(x) - p)
        # the predictions for cont come from the last len(cont) positions of x (the harness's slice)
        rows = [v if v < p else start + v - p for v in range(len(x) - len(cont), len(x))]
        scored.append((rows, cont))
    return tokens, positions, segments, scored


def document_rows(pairs, max_length, dim):
    """One document's (context, continuation) token pairs -> its rows: one packed row, or one row per choice
    where packing would not pay (choices that share little, e.g. contexts cut differently by truncation).

    Choice i's model input is x_i = (ctx + cont)[-(max_length + 1):][:-1] (the harness's left truncation) and its
    scored targets are cont. Cost of a row of T tokens ~ T * (1 + T / (6 * dim)): a LLaMA layer spends ~24 dim^2
    FLOPs per token in its matmuls and ~4 T dim in attention, which the block mask does not make cheaper.
    """
    xs, conts = [], []
    for ctx_enc, cont_enc in pairs:
        if len(cont_enc) > max_length:
            raise DataError(f"a continuation of {len(cont_enc)} tokens is longer than max_length {max_length}")
        xs.append((ctx_enc + cont_enc)[-(max_length + 1):][:-1])
        conts.append(cont_enc)
    row = pack(xs, conts)
    cost = lambda n: n * (1 + n / (6 * dim))  # noqa: E731
    if len(xs) == 1 or cost(len(row[0])) <= sum(cost(len(x)) for x in xs):
        return [row]
    return [pack([x], [c]) for x, c in zip(xs, conts)]


def batches(lengths, batch_size, batch_tokens):
    """Indices grouped into batches, longest first, each with at most batch_size rows and batch_tokens padded
    tokens (a row longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch = []
    for i in order:
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[batch[0]] > batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# -----------------------------------------------------------------------------
# scoring

@torch.inference_mode()
def score_rows(model, rows, batch_size=32, batch_tokens=8192, progress=True, desc="scoring"):
    """Packed rows -> per row, per choice, the summed log-likelihood of its continuation (float)."""
    device = model.lm_head.weight.device
    lls = [None] * len(rows)
    bar = tqdm(total=len(rows), desc=desc, unit="seq", disable=None if progress else True, file=sys.stderr)
    # fp32 logits for this many scored positions at a time: ~32 MB on CPU (faster there than bigger chunks,
    # measured), ~256 MB on GPU
    chunk = max(1, (2 ** 23 if device.type == "cpu" else 2 ** 26) // model.args.vocab_size)
    for batch in batches([len(row[0]) for row in rows], batch_size, batch_tokens):
        B, T = len(batch), len(rows[batch[0]][0])
        idx = torch.zeros(B, T, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        seg = torch.full((B, T), -1, dtype=torch.long)  # -1 = padding
        flat, targets = [], []  # scored row positions (flattened over the batch) and their target tokens
        for b, r in enumerate(batch):
            tokens, positions, segments, scored = rows[r]
            n = len(tokens)
            idx[b, :n] = torch.tensor(tokens)
            pos[b, :n] = torch.tensor(positions)
            seg[b, :n] = torch.tensor(segments)
            for where, cont in scored:
                flat += [b * T + w for w in where]
                targets += cont
        idx, pos, seg = idx.to(device), pos.to(device), seg.to(device)
        # a query sees earlier keys of the shared prefix or of its own segment; padding sees earlier padding,
        # so no row of the mask is empty (an all-False row would make SDPA return NaN)
        q, k = seg[:, :, None], seg[:, None, :]                                    # (B, T, 1), (B, 1, T)
        ar = torch.arange(T, device=device)
        causal = ar[None, :] <= ar[:, None]                                        # (T, T)
        mask = causal & ((k == q) | ((k == 0) & (q > 0)))                          # (B, T, T)
        h = model(idx, input_pos=pos, mask=mask[:, None], return_hidden=True)      # (B, T, dim)
        h = h.reshape(B * T, -1)[torch.tensor(flat, device=device)]                # (N, dim) scored positions only
        tgt = torch.tensor(targets, device=device)
        logp = torch.empty(len(targets), dtype=torch.float32, device=device)
        for s in range(0, len(targets), chunk):
            logits = model.lm_head(h[s:s + chunk]).float()                         # (n, V) fp32
            logp[s:s + chunk] = logits.log_softmax(-1).gather(1, tgt[s:s + chunk, None]).squeeze(1)
        logp = logp.cpu().numpy().astype(np.float64)
        at = 0
        for r in batch:
            out = []
            for where, _ in rows[r][3]:
                out.append(float(logp[at:at + len(where)].sum()))
                at += len(where)
            lls[r] = out
        bar.update(B)
    bar.close()
    return lls


def score_documents(model, documents, max_length, batch_size=32, batch_tokens=8192, progress=True, desc="scoring"):
    """documents: per document, its choices' (context tokens, continuation tokens) -> per document, the choices'
    log-likelihoods. The model is put in eval mode for the call and its mode restored afterwards."""
    rows, owner = [], []  # owner: the document of each row
    for i, pairs in enumerate(documents):
        new = document_rows(pairs, max_length, model.args.dim)
        rows += new
        owner += [i] * len(new)
    was_training = model.training
    model.eval()
    try:
        row_lls = score_rows(model, rows, batch_size, batch_tokens, progress, desc)
    finally:
        model.train(was_training)
    lls = [[] for _ in documents]
    for i, ll in zip(owner, row_lls):
        lls[i] += ll  # a document's rows are consecutive and in choice order
    return lls

# -----------------------------------------------------------------------------
# metrics, as the harness's process_results and aggregations compute them

def mean(values):
    return sum(values) / len(values)  # the harness's `mean`: a plain sum in document order


def mc2_score(lls, labels):
    probs = np.exp(np.array(lls))  # no max subtraction, as the harness
    probs = probs / np.sum(probs)
    return float(np.sum(probs[np.array(labels) == 1]))


def doc_metrics(metrics, doc, lls):
    if metrics == ("mc2",):
        return {"acc": mc2_score(lls, doc["gold"])}
    out = {"acc": 1.0 if np.argmax(lls) == doc["gold"] else 0.0}
    if "acc_norm" in metrics:
        lengths = np.array([float(len(c)) for c in doc["choices"]])  # characters, not tokens or bytes
        out["acc_norm"] = 1.0 if np.argmax(np.array(lls) / lengths) == doc["gold"] else 0.0
    return out


def mmlu_subtasks(docs, accs):
    """The harness's mmlu_<category> groups and mmlu_<subject> tasks, and the overall mmlu acc."""
    by_subject = {}
    for doc, acc in zip(docs, accs):
        by_subject.setdefault(doc["subject"], []).append(acc)
    subject = {s: (mean(v), len(v)) for s, v in by_subject.items()}

    def weighted(subjects):  # the harness's aggregate_subtask_metrics(weight_by_size=True), same order
        present = [s for s in subjects if s in subject]
        n = sum(subject[s][1] for s in present)
        return sum(subject[s][0] * subject[s][1] for s in present) / n, n

    subtasks = {}
    for category, subjects in MMLU_CATEGORIES.items():
        if any(s in subject for s in subjects):
            acc, n = weighted(subjects)
            subtasks[f"mmlu_{category}"] = {"acc": acc, "n": n}
    for s in sorted(subject):
        subtasks[f"mmlu_{s}"] = {"acc": subject[s][0], "n": subject[s][1]}
    acc, _ = weighted([s for subjects in MMLU_CATEGORIES.values() for s in subjects])
    return acc, subtasks


def task_results(task, docs, lls):
    metrics = TASKS[task][2]
    per_doc = [doc_metrics(metrics, doc, ll) for doc, ll in zip(docs, lls)]
    accs = [m["acc"] for m in per_doc]
    result = {"acc": mean(accs), "acc_norm": None, "n": len(docs)}
    if "acc_norm" in metrics:
        result["acc_norm"] = mean([m["acc_norm"] for m in per_doc])
    if task == "mmlu":
        result["acc"], result["subtasks"] = mmlu_subtasks(docs, accs)
    samples = []
    for doc, ll, m in zip(docs, lls, per_doc):
        sample = {"doc_id": doc["doc_id"], "lls": ll, "gold": doc["gold"], **m}
        if "subject" in doc:
            sample["subject"] = doc["subject"]
        samples.append(sample)
    return result, samples


# -----------------------------------------------------------------------------
# the function API

def evaluate(model, tokenizer, tasks, data_dir, limit=None, batch_size=32, batch_tokens=None, max_length=None,
             progress=True):
    """Score `tasks` (names from TASKS) with an in-memory Transformer; returns {"results", "samples", "config"}.

    limit: the first N documents of each task (of each subject for mmlu), or {task: N}. batch_size: the most rows
    (documents; a document whose choices share little takes one row per choice) per
    forward; batch_tokens: the most (padded) tokens per forward (default 8192 on CPU, 65536 on GPU).
    max_length: the harness's context window (default the model's max_seq_len, i.e. max_position_embeddings).
    The model runs in its own dtype; log-softmax is always fp32. Its train/eval mode is restored afterwards.
    """
    tasks = list(dict.fromkeys(tasks))
    check_tasks(tasks)
    limits = limit if isinstance(limit, dict) else {t: limit for t in tasks}
    for t in tasks:
        n = limits.get(t)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"limit must be a positive integer, got {n!r} for {t}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = model.lm_head.weight.device
    batch_tokens = batch_tokens or (65536 if device.type == "cuda" else 8192)
    max_length = max_length or model.args.max_seq_len
    if not 1 <= max_length <= model.args.max_seq_len:
        raise ValueError(f"max_length must be between 1 and the model's max_seq_len {model.args.max_seq_len}, "
                         f"got {max_length}")
    if tokenizer.vocab_size > model.args.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.args.vocab_size}")

    t0 = time.time()
    docs = {t: load_docs(t, data_dir, limits.get(t)) for t in tasks}
    flat = [d for t in tasks for d in docs[t]]
    encoded = encode_requests(tokenizer, [r for d in flat for r in zip(d["contexts"], d["continuations"])])
    per_doc, at = [], 0
    for d in flat:
        per_doc.append(encoded[at:at + len(d["choices"])])
        at += len(d["choices"])
    lls = score_documents(model, per_doc, max_length, batch_size, batch_tokens, progress,
                          desc="mc " + ",".join(tasks))

    out = {"results": {}, "samples": {}}
    at = 0
    for t in tasks:
        out["results"][t], out["samples"][t] = task_results(t, docs[t], lls[at:at + len(docs[t])])
        at += len(docs[t])
    out["config"] = {"tasks": tasks, "limit": limit, "max_length": max_length, "device": str(device),
                     "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."), "batch_size": batch_size,
                     "batch_tokens": batch_tokens, "harness_version": HARNESS_VERSION,
                     "seconds": round(time.time() - t0, 3)}
    return out


def format_table(results):
    lines = ["| task | n | acc | acc_norm |", "|---|---:|---:|---:|"]
    for task, r in results.items():
        norm = "" if r["acc_norm"] is None else f"{r['acc_norm']:.4f}"
        name = f"{task} (mc2)" if TASKS[task][2] == ("mc2",) else task
        lines.append(f"| {name} | {r['n']} | {r['acc']:.4f} | {norm} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# CLI

def main(argv=None):
    p = argparse.ArgumentParser(description=f"Zero-shot multiple-choice scores, identical to lm-evaluation-harness "
                                            f"{HARNESS_VERSION} (hf backend); the log-softmax is always fp32.")
    model_options(p)
    p.add_argument("--tasks", required=True, help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--data_dir", help="directory with <task>.jsonl in the HF-datasets layout (default: "
                   "$NANOPLW_DATA/hf, else data/eval/hf; python data/fetch.py fills it)")
    p.add_argument("--limit", type=int, help="first N documents of each task (of each subject for mmlu)")
    p.add_argument("--batch_size", type=int, default=32, help="most documents per forward (default 32)")
    p.add_argument("--batch_tokens", type=int, help="most padded tokens per forward (default 8192 CPU, 65536 GPU)")
    args = p.parse_args(argv)
    return report_errors("mc.py", run, args)


def check_options(args, *names):
    """Refuse, before any work, a count option that is not a positive integer (None: its default)"""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise DataError(f"--{name} must be a positive integer, got {v}")


def run(args):
    args.data_dir = args.data_dir or str(eval_data_dir() / "hf")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    check_tasks(tasks)
    check_options(args, "limit", "batch_size", "batch_tokens", "max_length")
    check_device(args.device)
    for t in tasks:  # missing data is reported before minutes of model loading
        path = Path(args.data_dir) / TASKS[t][0]
        if not path.is_file():
            raise missing_data(path, f"task {t} reads {TASKS[t][0]} in the HF-datasets layout")
    if args.output:  # before minutes of scoring
        check_writable(args.output)
    return evaluate_model(args, tasks, evaluate, format_table, batch_tokens=args.batch_tokens)


def model_options(p):
    """The command-line options evaluate_model reads (mc.py and gen.py take them alike)"""
    p.add_argument("--model", required=True, help="HF-layout LLaMA directory (config.json, model.safetensors)")
    p.add_argument("--tokenizer", help="a tokenizer.model, sentencepiece or tiktoken format (default: the "
                   "one in --model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="model weights (default bfloat16 on CUDA, float32 elsewhere)")
    p.add_argument("--max_length", type=int, help="context window (default the model's max_position_embeddings)")
    p.add_argument("--output", help="write the JSON results here (atomically)")


def evaluate_model(args, tasks, evaluate, format_table, **options):
    """The tail of mc.py's and gen.py's command: load --model (weights in --dtype) and its tokenizer, run evaluate()
    on the tasks, print the table, write --output"""
    if not Path(args.model).is_dir():  # before the tokenizer, which would be "not found" for the same reason
        raise DataError(f"model directory not found: {args.model}")
    check_device(args.device)
    context = read_args(args.model).max_seq_len  # config.json alone: checked before minutes of loading
    if args.max_length is not None and args.max_length > context:
        raise DataError(f"--max_length {args.max_length} exceeds the model's context of {context} tokens "
                        f"(max_position_embeddings in {Path(args.model) / 'config.json'})")
    if args.device == "cpu" and (note := choose_threads(torch)):
        print(note, file=sys.stderr)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    tokenizer = Tokenizer(args.tokenizer or args.model)
    model = load_model(args.model, device=args.device, dtype=dtype)
    out = evaluate(model, tokenizer, tasks, args.data_dir, limit=args.limit, batch_size=args.batch_size,
                   max_length=args.max_length, **options)
    out["config"]["model"] = str(args.model)
    print(format_table(out["results"]))
    if args.output:
        write_json(args.output, out, indent=None)
    return 0


if __name__ == "__main__":
    catch_stop_signals(interrupt=True)  # Ctrl-C / SIGTERM: one line, exit 130 / 143
    sys.exit(main())
