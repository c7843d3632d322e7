"""eval/mc.py against lm-evaluation-harness 0.4.13 itself, run on the same tiny random LLaMA and the same documents.

The harness runs in a subprocess (tests/fixtures/mc/harness_ref.py) with its own task YAMLs, only pointed at
local JSONL, its HF backend and the slow sentencepiece tokenizer. Every request's (context, continuation)
strings must be identical, every log-likelihood within 1e-4 (plus one fp32 step of the harness's own fp32 sum,
which exceeds 1e-4 past |ll| = 2048), every prediction and acc / acc_norm identical, per document and per task
(mmlu's groups and subjects included, bit for bit; mc2, a continuous function of the lls, within max |d ll|). The documents are the first few of each task plus the tricky
ones: whitespace around PIQA solutions and MMLU questions, HellaSwag's [bracket] markup and a ctx_b to
capitalise, the 24-choice TruthfulQA item, the longest BoolQ passage and PIQA solution, OpenBookQA stems that
end in whitespace (moved to the continuation), ARC with 3 numbered choices; then left truncation with a small
max_length. The tests without the harness check the packing against a plain unpacked forward, the metrics and
the CLI.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import EVAL_HF, LLAMA_TOKENIZER, ROOT, STORIES, require, run_harness, tiny_hf_llama
from eval import mc
from checkpoint import load_model
from tokenizer import Tokenizer

HARNESS_REF = ROOT / "tests" / "fixtures" / "mc" / "harness_ref.py"
NON_MMLU = ["arc_challenge", "arc_easy", "piqa", "winogrande", "hellaswag", "truthfulqa_mc1", "truthfulqa_mc2",
            "boolq", "openbookqa"]
# (tasks, limit, max_length): each run is made by the harness and by us
RUNS = {
    "all": (NON_MMLU, None, None),
    "mmlu": (["mmlu"], 1, None),  # 2 docs per subject in the file: the limit applies per subject
    "truncated": (["winogrande", "hellaswag", "truthfulqa_mc2", "boolq", "arc_challenge"], 4, 64),
}

# tricky documents (line indices into ../shared/data/eval/hf) placed first; then the first few of each file
TRICKY = {"piqa": [1, 13, 314], "hellaswag": [3505, 3691], "truthfulqa_mc": [549], "boolq": [3154]}
FIRST = {"arc_challenge": 5, "arc_easy": 4, "piqa": 3, "winogrande": 5, "hellaswag": 3, "truthfulqa_mc": 3,
         "boolq": 3, "openbookqa": 3}
SYNTHETIC = {
    "arc_challenge": [{"id": "x1", "question": "Which number is largest?",
                       "choices": {"text": ["one", "three", "two"], "label": ["1", "2", "3"]}, "answerKey": "2"}],
    "hellaswag": [{"ind": 0, "activity_label": "Cooking", "ctx_a": "A man cracks two eggs into a bowl.",
                   "ctx_b": "then he", "ctx": "", "endings": ["whisks them [step] fast.", "sings.", "sleeps.",
                                                              "paints  the bowl."], "label": "0"}],
    "openbookqa": [
        {"id": "x1", "question_stem": "The sun is a ", "choices": {"text": ["star", "planet", "moon", "comet"],
                                                                   "label": ["A", "B", "C", "D"]}, "answerKey": " A"},
        {"id": "x2", "question_stem": "Water boils at\n", "choices": {"text": ["100 C", "0 C", "50 C", "10 C"],
                                                                     "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    ],
}


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


def lines_of(path):
    # split on "\n" only: str.splitlines would also split at U+2028 and friends, which JSON strings may hold raw
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def write_subset(dst):
    """Small copies of the eval files: tricky and synthetic documents first, then the first few."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in FIRST.items():
        lines = lines_of(EVAL_HF / f"{name}.jsonl")
        keep = [lines[i] for i in TRICKY.get(name, [])] + [json.dumps(d) for d in SYNTHETIC.get(name, [])]
        keep += lines[:n]
        (dst / f"{name}.jsonl").write_text("\n".join(keep) + "\n")
    # mmlu: 2 documents of every subject, one with stray whitespace in its question or choices where there is one
    by_subject = {}
    for line in lines_of(EVAL_HF / "mmlu_test.jsonl"):
        d = json.loads(line)
        by_subject.setdefault(d["subject"], {"first": [], "ws": []})
        by_subject[d["subject"]]["first"].append(line)
        if d["question"] != d["question"].strip() or any(c != c.strip() for c in d["choices"]):
            by_subject[d["subject"]]["ws"].append(line)
    keep = [line for s in by_subject.values() for line in (s["ws"][:1] + s["first"])[:2]]
    (dst / "mmlu_test.jsonl").write_text("\n".join(keep) + "\n")
    (dst / "mmlu_dev.jsonl").write_text((EVAL_HF / "mmlu_dev.jsonl").read_text())  # the harness wants its dev split
    return dst


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer, 64-wide random LLaMA with the real 32k LLaMA tokenizer, saved by transformers."""
    transformers = pytest.importorskip("transformers")
    path = tiny_hf_llama(tmp_path_factory.mktemp("tiny_llama"))
    hf_tok = transformers.LlamaTokenizer(vocab_file=str(LLAMA_TOKENIZER), legacy=True)
    hf_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    require(EVAL_HF)
    return write_subset(tmp_path_factory.mktemp("mc_data"))


@pytest.fixture(scope="module")
def harness(tiny_llama, subset, tmp_path_factory):
    """The harness's results for every run in RUNS (one subprocess, so the task index is built once)."""
    pytest.importorskip("lm_eval")
    work = tmp_path_factory.mktemp("harness")
    spec = {"model": str(tiny_llama), "data_dir": str(subset), "work": str(work),
            "runs": [{"tasks": t, "limit": lim, "max_length": ml} for t, lim, ml in RUNS.values()]}
    return dict(zip(RUNS, run_harness(HARNESS_REF, spec, work, one_thread=False)))


@pytest.fixture(scope="module")
def ours(tiny_llama, subset):
    model = load_model(tiny_llama, dtype=torch.float32)
    tok = Tokenizer(tiny_llama)
    return {name: mc.evaluate(model, tok, t, subset, limit=lim, max_length=ml, batch_size=8, batch_tokens=2048,
                              progress=False)
            for name, (t, lim, ml) in RUNS.items()}


def harness_samples(ref, task):
    """The harness's samples of one of our tasks; mmlu's come from its 57 subject tasks, in subject order."""
    if task != "mmlu":
        return ref["samples"][task]
    return [s for name in sorted(n for n in ref["samples"] if n.startswith("mmlu_")) for s in ref["samples"][name]]


# -----------------------------------------------------------------------------
# parity with the harness

def test_harness_version(harness):
    assert all(r["version"] == mc.HARNESS_VERSION for r in harness.values())


def test_tokenizer_is_the_harness_tokenizer(tiny_llama, subset):
    """The harness encodes with HF's slow LlamaTokenizer from the model dir; ours must give the same ids (BOS too)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tiny_llama, use_fast=False)
    ours = Tokenizer(tiny_llama)
    texts = [" Answer: yes  two", "Question: x\nAnswer:", "  leading", "\n\nQ: a?\nA:", "é ∑ 😀", "trailing  "]
    for task in ("piqa", "openbookqa", "hellaswag"):
        for line in lines_of(subset / f"{task}.jsonl")[:4]:
            d = mc.TASKS[task][1](json.loads(line))
            texts += [c + k for c, k in zip(d[0], d[1])]
    for t in texts:
        assert ours.encode(t, bos=True) == hf.encode(t), t


def ll_tolerance(ref):
    # 1e-4, plus the resolution of the harness's own number: it sums the token log-probs in fp32, and past
    # |ll| = 2048 (the longest PIQA solution here reaches ~3100) one fp32 step alone is 2.4e-4
    return 1e-4 + float(np.spacing(np.float32(abs(ref))))


@pytest.mark.parametrize("run", list(RUNS))
def test_parity_with_harness(run, harness, ours, subset):
    ref, out = harness[run], ours[run]
    tasks, limit, _ = RUNS[run]
    for task in tasks:
        theirs, mine = harness_samples(ref, task), out["samples"][task]
        docs = mc.load_docs(task, subset, limit)
        assert len(docs) == len(mine) == len(theirs) > 0, task
        worst = 0.0
        for doc, m, h in zip(docs, mine, theirs):
            where = (task, doc["doc_id"], m["lls"], h["lls"])
            assert m["doc_id"] == h["doc_id"] == doc["doc_id"]
            # the very same requests: contexts, delimiter, choices, descriptions, the QA prompt
            assert [list(r) for r in zip(doc["contexts"], doc["continuations"])] == h["arguments"], where
            assert len(m["lls"]) == len(h["lls"]), where
            deltas = [abs(a - b) for a, b in zip(m["lls"], h["lls"])]
            assert all(d <= ll_tolerance(b) for d, b in zip(deltas, h["lls"])), where
            worst = max(worst, *deltas)
            # the same predictions, not only the same 0/1 scores (a random model is mostly wrong)
            lengths = np.array([len(c) for c in doc["choices"]], dtype=float)
            assert np.argmax(m["lls"]) == np.argmax(h["lls"]), where
            assert np.argmax(np.array(m["lls"]) / lengths) == np.argmax(np.array(h["lls"]) / lengths), where
            if task == "truthfulqa_mc2":
                # mc2 = sum of softmax(ll) over the true choices moves by at most max |d ll| (d mc2 / d ll_j is
                # p_j (1[j true] - mc2), at most p_j in size, and the p_j sum to 1)
                assert abs(m["acc"] - h["acc"]) <= max(deltas) + 1e-12, where
            else:
                assert (m["acc"], m.get("acc_norm")) == (h["acc"], h["acc_norm"]), where
        r, hr = out["results"][task], ref["results"][task]
        assert r["n"] == hr["n"], task
        if task == "truthfulqa_mc2":
            assert abs(r["acc"] - hr["acc"]) <= worst, task
        else:
            assert (r["acc"], r["acc_norm"]) == (hr["acc"], hr["acc_norm"]), task  # bit for bit
    if "mmlu" in tasks:  # every group and subject the harness reports, bit for bit
        subtasks = out["results"]["mmlu"]["subtasks"]
        assert set(subtasks) == {k for k in ref["results"] if k.startswith("mmlu_")}
        assert len(subtasks) == 4 + 57
        for name, v in subtasks.items():
            assert (v["acc"], v["n"]) == (ref["results"][name]["acc"], ref["results"][name]["n"]), name


# -----------------------------------------------------------------------------
# without the harness: packing, metrics, limits, CLI

def reference_lls(model, pairs, max_length):
    """Each choice alone, unpacked: the harness's input slice, full logits, log-softmax, sum over the continuation."""
    out = []
    for ctx, cont in pairs:
        x = (ctx + cont)[-(max_length + 1):][:-1]
        logp = F.log_softmax(model(torch.tensor([x]))[0].float(), dim=-1)             # (T, V)
        rows = logp[len(x) - len(cont):]                                              # (len(cont), V)
        out.append(rows.gather(1, torch.tensor(cont)[:, None]).double().sum().item())  # fp64 sum: exact enough
    return out


@pytest.mark.parametrize("max_length", [None, 128])  # None: STORIES' 512, which still cuts the longest contexts
def test_packed_rows_equal_separate_forwards(subset, max_length):
    """Shared prefix once, choices after it with restarted positions and a block mask, batched with padding and
    the head on scored positions only: the same numbers as one plain forward per choice."""
    model = load_model(STORIES, dtype=torch.float32)
    tok = Tokenizer(STORIES)
    L = max_length or model.args.max_seq_len
    counts = {"winogrande": 2, "hellaswag": 2, "truthfulqa_mc2": 1, "boolq": 2, "openbookqa": 2, "mmlu": 3}
    docs = [d for task, n in counts.items() for d in mc.load_docs(task, subset, limit=1 if task == "mmlu" else n)[:n]]
    pairs = mc.encode_requests(tok, [r for d in docs for r in zip(d["contexts"], d["continuations"])])
    per_doc, at = [], 0
    for d in docs:
        per_doc.append(pairs[at:at + len(d["choices"])])
        at += len(d["choices"])
    rows = [r for p in per_doc for r in mc.document_rows(p, L, model.args.dim)]
    assert len(rows) < len(pairs)  # choices were packed together
    got = mc.score_documents(model, per_doc, L, batch_size=4, batch_tokens=1024, progress=False)
    with torch.no_grad():
        for p, lls in zip(per_doc, got):
            want = reference_lls(model, p, L)
            # fp32 model arithmetic in a different order (packed rows, other matmul shapes) moves each token's
            # log-prob by ~1e-7 relative; sums of a few hundred tokens land within 1e-6 relative
            np.testing.assert_allclose(lls, want, rtol=1e-6, atol=1e-5)


def test_row_layout():
    # two choices sharing [1, 5, 6]; the second continuation is one token: it is scored from the prefix's end
    [row] = mc.document_rows([([1, 5, 6], [7, 8]), ([1, 5, 6], [9])], max_length=100, dim=64)
    tokens, positions, segments, scored = row
    assert tokens == [1, 5, 6, 7] and positions == [0, 1, 2, 3] and segments == [0, 0, 0, 1]
    assert scored == [([2, 3], [7, 8]), ([2], [9])]
    # the remainders restart their positions after the shared prefix
    [row] = mc.document_rows([([1, 5], [7, 8]), ([1, 5], [9, 4, 3])], max_length=100, dim=64)
    assert row[0] == [1, 5, 7, 9, 4] and row[1] == [0, 1, 2, 2, 3] and row[2] == [0, 0, 1, 2, 2]
    assert row[3] == [([1, 2], [7, 8]), ([1, 3, 4], [9, 4, 3])]
    # left truncation to max_length + 1 tokens, then the last is dropped (the harness's slice)
    [row] = mc.document_rows([([1, 2, 3, 4, 5], [6, 7])], max_length=4, dim=64)
    assert row[0] == [3, 4, 5, 6] and row[1] == [0, 1, 2, 3] and row[3] == [([2, 3], [6, 7])]
    # nothing shared (truncation cut the contexts differently): one row per choice, not one long masked row
    rows = mc.document_rows([([1, 2, 3, 4, 5], [6, 7]), ([1, 2, 3, 4, 5], [8])], max_length=4, dim=64)
    assert [r[0] for r in rows] == [[3, 4, 5, 6], [2, 3, 4, 5]]
    with pytest.raises(ValueError, match="longer than max_length"):
        mc.document_rows([([1], [2, 3, 4])], max_length=2, dim=64)


def test_metrics():
    doc = {"gold": 1, "choices": ["aaaa", "b", "cc"]}
    # per character: -0.5, -2, -1.5: acc_norm picks choice 0; a tie goes to the first
    assert mc.doc_metrics(("acc", "acc_norm"), doc, [-2.0, -2.0, -3.0]) == {"acc": 0.0, "acc_norm": 0.0}
    # -0.5, -1, -2.5
    assert mc.doc_metrics(("acc", "acc_norm"), doc, [-2.0, -1.0, -5.0]) == {"acc": 1.0, "acc_norm": 0.0}
    # -0.75, -0.5, -2
    assert mc.doc_metrics(("acc", "acc_norm"), doc, [-3.0, -0.5, -4.0]) == {"acc": 1.0, "acc_norm": 1.0}
    assert mc.doc_metrics(("acc",), doc, [-3.0, -2.0, -5.0]) == {"acc": 1.0}
    # lengths in characters, not UTF-8 bytes: -2/2 < -1.5/2 here, but -2/4 > -1.5/2 by bytes
    assert mc.doc_metrics(("acc", "acc_norm"), {"gold": 0, "choices": ["éé", "ab"]}, [-2.0, -1.5])["acc_norm"] == 0.0
    lls = np.log([0.1, 0.15, 0.25])  # normalised: 0.2, 0.3, 0.5
    assert mc.doc_metrics(("mc2",), {"gold": [1, 0, 1], "choices": ["x"] * 3}, lls)["acc"] == pytest.approx(0.7)


def test_prompts():
    """Spot checks of the prompt strings (the parity test compares all of them with the harness's)."""
    d = mc.winogrande({"sentence": "Ann helped Bo because _ was kind .", "option1": "Ann", "option2": "Bo",
                       "answer": "1"})
    assert d == (["Ann helped Bo because Ann", "Ann helped Bo because Bo"], [" was kind ."] * 2,
                 ["Ann helped Bo because Ann", "Ann helped Bo because Bo"], 0)
    # strip; " [title]" -> ". "; drop [step]; then a single pass of "  " -> " " (a triple space keeps two)
    assert mc.hellaswag_clean(" A [title] B [step] c  d   e ") == "A. B c d  e"
    ctx = mc.mmlu({"question": " 2+2? ", "subject": "high_school_us_history", "choices": ["1", "2", "3", "4"],
                   "answer": 3})[0][0]
    assert ctx == ("The following are multiple choice questions (with answers) about high school us history.\n\n"
                   "2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    # trailing whitespace of a context moves to the continuation, then the whole string is split
    tok = Tokenizer(require(LLAMA_TOKENIZER))
    [(ctx_enc, cont_enc)] = mc.encode_requests(tok, [("The sun is a ", " star")])
    assert ctx_enc == tok.encode("The sun is a", bos=True)
    assert ctx_enc + cont_enc == tok.encode("The sun is a  star", bos=True)


def test_prompts_equal_the_harness_functions_on_every_document():
    """HellaSwag's preprocessing and WinoGrande's partial scoring, against the harness's own Python over the full
    files (the parity test compares the final request strings only on the documents it scores)."""
    pytest.importorskip("lm_eval")
    datasets = pytest.importorskip("datasets")
    from lm_eval.tasks.hellaswag import utils as hs
    from lm_eval.tasks.winogrande import preprocess_winogrande as wg

    require(EVAL_HF)
    raw = [json.loads(line) for line in lines_of(EVAL_HF / "hellaswag.jsonl")]
    raw.append({**raw[0], "ctx_b": "then he [title] walks  away", "endings": [" a [x] b ", "c  ", "d", "e"]})
    theirs = hs.process_docs(datasets.Dataset.from_list(raw))
    for doc, h in zip(raw, theirs):
        contexts, continuations, choices, gold = mc.hellaswag(doc)
        assert (contexts[0], choices, gold) == (h["query"], h["choices"], h["gold"])
    for line in lines_of(EVAL_HF / "winogrande.jsonl"):
        doc = json.loads(line)
        contexts, continuations, choices, gold = mc.winogrande(doc)
        theirs = (wg.doc_to_choice(doc), wg.doc_to_target(doc), wg.doc_to_text(doc))
        assert (contexts, continuations[0][1:], gold) == theirs


def test_mmlu_limit_is_per_subject():
    docs = mc.load_docs("mmlu", require(EVAL_HF), limit=2)
    first = {}
    for line in lines_of(EVAL_HF / "mmlu_test.jsonl"):
        d = json.loads(line)
        if len(first.setdefault(d["subject"], [])) < 2:
            first[d["subject"]].append(d["question"])
    assert len(first) == 57 and len(docs) == 114
    got = {}
    for d in docs:
        assert d["doc_id"] == len(got.setdefault(d["subject"], []))
        got[d["subject"]].append(d)
    for s, qs in first.items():
        assert [d["contexts"][0].split("\n\n", 1)[1].split("\nA. ")[0] for d in got[s]] == [q.strip() for q in qs]


def test_cli_errors(tmp_path, capsys):
    assert mc.main(["--model", str(STORIES), "--tasks", "arc_easy,nope", "--data_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task(s) nope" in err and "arc_challenge" in err and "mmlu" in err
    assert mc.main(["--model", str(STORIES), "--tasks", "piqa", "--data_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "piqa.jsonl") in err
    (tmp_path / "piqa.jsonl").write_text('{"goal": "g", "sol1": "a"}\n')
    assert mc.main(["--model", str(STORIES), "--tasks", "piqa", "--data_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "piqa.jsonl:1" in err and "sol2" in err
    assert mc.main(["--model", str(tmp_path / "none"), "--tasks", "piqa", "--data_dir", str(tmp_path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_cli_end_to_end(tmp_path, subset):
    out = tmp_path / "sub" / "mc.json"
    p = subprocess.run([sys.executable, "eval/mc.py", "--model", str(STORIES), "--tasks", "arc_easy,boolq,mmlu",
                        "--data_dir", str(subset), "--limit", "2", "--output", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    assert "| arc_easy | 4 |" not in p.stdout and "| arc_easy | 2 |" in p.stdout and "| mmlu | 114 |" in p.stdout
    saved = json.loads(out.read_text())
    model = load_model(STORIES, dtype=torch.float32)
    again = mc.evaluate(model, Tokenizer(STORIES), ["arc_easy", "boolq", "mmlu"], subset, limit=2, progress=False)
    for task in ("arc_easy", "boolq", "mmlu"):
        assert saved["results"][task]["n"] == again["results"][task]["n"]
        assert saved["results"][task]["acc"] == again["results"][task]["acc"]
        assert [s["doc_id"] for s in saved["samples"][task]] == [s["doc_id"] for s in again["samples"][task]]
        np.testing.assert_allclose([x for s in saved["samples"][task] for x in s["lls"]],
                                   [x for s in again["samples"][task] for x in s["lls"]], rtol=0, atol=1e-5)
    assert saved["results"]["boolq"]["acc_norm"] is None and saved["config"]["harness_version"] == "0.4.13"

