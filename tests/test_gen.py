"""eval/gen.py against lm-evaluation-harness 0.4.13 itself, on the same models and the same documents.

The harness runs in a subprocess (tests/fixtures/gen/harness_ref.py) with its own task YAMLs, only pointed at local
JSONL (our CSV / text files converted to the HF datasets' layout by eval/gen.py's loaders), its HF backend and the
slow sentencepiece tokenizer. Two models: stories260K (512-token window, so the TruthfulQA prompt is left-truncated
to 512 - 256 tokens, and a 512-piece vocabulary whose stories do end lines) and a tiny random LLaMA with the 32k
LLaMA tokenizer (random tokens: byte pieces, "▁▁" first pieces, EOS / UNK / BOS mid-text), this one with
max_gen_toks lowered to 48 through the harness's gen_kwargs. Every prompt, every generated string and every metric
must be the harness's (strings identical, numbers within 1e-9). Without the harness: our HF-style decode against
HF's slow tokenizer on random ids, the truthfulqa references against the harness's process_docs_gen on all 817
questions, the early-stopping generation against one plain generate, the CLI.
"""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import LLAMA_TOKENIZER, ROOT, SHARED, STORIES, require, run_harness, tiny_hf_llama
from eval import gen
from checkpoint import load_model
from tokenizer import Tokenizer
from util import cli

HARNESS_REF = ROOT / "tests" / "fixtures" / "gen" / "harness_ref.py"
DATA = SHARED / "data" / "eval"
# run name -> (model fixture, tasks, limit, max_gen_toks (None: the harness's default 256))
RUNS = {
    "stories260K": ("stories", ["truthfulqa_gen", "wmt16-de-en", "wmt14-en-fr"], 6, None),
    "tiny_llama": ("tiny_llama", ["truthfulqa_gen", "wmt16-en-ro", "wmt14-fr-en"], 5, 48),
}


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


def with_hf_tokenizer(src, dst, tokenizer_model):
    """A copy of a model directory with the files HF's slow LlamaTokenizer (legacy) loads from."""
    transformers = pytest.importorskip("transformers")
    if src != dst:
        shutil.copytree(src, dst)
    transformers.LlamaTokenizer(vocab_file=str(tokenizer_model), legacy=True).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    return with_hf_tokenizer(STORIES, tmp_path_factory.mktemp("m") / "stories260K", STORIES / "tokenizer.model")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer, 64-wide random LLaMA with the real 32k LLaMA tokenizer, saved by transformers."""
    path = tiny_hf_llama(tmp_path_factory.mktemp("tiny_llama"))
    return with_hf_tokenizer(path, path, LLAMA_TOKENIZER)


@pytest.fixture(scope="module")
def models(stories, tiny_llama):
    return {"stories": stories, "tiny_llama": tiny_llama}


@pytest.fixture(scope="module")
def harness(models, tmp_path_factory):
    """The harness's results for every run in RUNS (one subprocess, so the task index is built once)."""
    pytest.importorskip("lm_eval")
    require(DATA)
    work = tmp_path_factory.mktemp("harness")
    files = {}
    for task in {t for _, tasks, _, _ in RUNS.values() for t in tasks}:
        limit = max(lim for _, tasks, lim, _ in RUNS.values() if task in tasks)
        files[task] = str(work / f"{task}.jsonl")
        records = gen.load_records(task, DATA)[:limit]
        (work / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = {"files": files, "work": str(work),
            "runs": [{"model": str(models[m]), "tasks": t, "limit": lim, "max_gen_toks": mg}
                     for m, t, lim, mg in RUNS.values()]}
    return dict(zip(RUNS, run_harness(HARNESS_REF, spec, work)))


@pytest.fixture(scope="module")
def ours(models):
    out = {}
    for name, (m, tasks, limit, max_gen_toks) in RUNS.items():
        model = load_model(models[m], dtype=torch.float32)
        out[name] = gen.evaluate(model, Tokenizer(models[m]), tasks, DATA, limit=limit, batch_size=4,
                                 max_new_tokens=max_gen_toks or gen.MAX_GEN_TOKS, progress=False)
    return out


# -----------------------------------------------------------------------------
# parity with the harness

def test_harness_version(harness):
    assert all(r["version"] == gen.HARNESS_VERSION for r in harness.values())


@pytest.mark.parametrize("run", list(RUNS))
def test_parity_with_harness(run, harness, ours):
    ref, out = harness[run], ours[run]
    _, tasks, limit, max_gen_toks = RUNS[run]
    for task in tasks:
        theirs, mine = ref["samples"][task], out["samples"][task]
        assert len(theirs) == len(mine) == limit, task
        for h, m in zip(theirs, mine):
            where = (task, m["doc_id"], m["output"], h["resp"])
            assert h["doc_id"] == m["doc_id"]
            assert h["context"] == m["prompt"], where                         # the very same prompt string
            # the same stop strings and token limit (truthfulqa's YAML gets the default 256 written in)
            assert h["until"] == gen.UNTIL[task], where
            assert (h["max_gen_toks"] or gen.MAX_GEN_TOKS) == (max_gen_toks or gen.MAX_GEN_TOKS), where
            assert h["resp"] == h["filtered"] == m["output"], where           # the very same generation
            if task == "truthfulqa_gen":
                for metric in gen.TRUTHFULQA_METRICS:
                    assert m[metric] == pytest.approx(h["metrics"][metric], abs=1e-9), (metric, where)
                    assert type(m[metric]) is (int if metric.endswith("_acc") else float), metric
            else:
                for metric in gen.WMT_METRICS:  # per document the harness keeps (reference, prediction)
                    assert h["metrics"][metric] == [m["reference"], m["output"]], (metric, where)
        r, hr = out["results"][task], ref["results"][task]
        assert r["n"] == limit
        metrics = gen.TRUTHFULQA_METRICS if task == "truthfulqa_gen" else gen.WMT_METRICS
        assert set(hr) == set(metrics) | {f"{k}_stderr" for k in metrics}, task
        for metric in metrics:
            assert r[metric] == pytest.approx(hr[metric], abs=1e-9), (task, metric)


def test_runs_exercise_the_edge_cases(ours):
    """The parity runs cover what they are meant to: outputs cut at a stop string, outputs that ran to
    max_gen_toks, and left truncation (stories260K's truthfulqa prompt is longer than 512 - 256 tokens)."""
    samples = [s for run in RUNS for t in RUNS[run][1] for s in ours[run]["samples"][t]]
    finish = {s["finish"] for s in samples}
    assert {"stop", "length"} <= finish
    assert all(s["new_tokens"] <= (RUNS[run][3] or gen.MAX_GEN_TOKS)
               for run in RUNS for t in RUNS[run][1] for s in ours[run]["samples"][t])
    doc = gen.load_docs("truthfulqa_gen", DATA, 1)[0]
    assert len(Tokenizer(STORIES).encode(doc["prompt"], bos=True)) > 512 - 256


# -----------------------------------------------------------------------------
# without the harness: decoding, references, generation, CLI

@pytest.mark.parametrize("tok_path", [STORIES / "tokenizer.model", LLAMA_TOKENIZER])
def test_hf_decode_equals_hf_slow_tokenizer(tok_path):
    """Random id sequences, biased toward the awkward ids (specials, byte pieces, "▁"-only pieces, newlines):
    our decode is HF's decode(ids, skip_special_tokens=True), and the text before a stop string never changes
    when more tokens follow (what lets a row stop early)."""
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(require(tok_path))
    hf = transformers.LlamaTokenizer(vocab_file=str(tok_path), legacy=True)
    awkward = [i for i in range(tok.vocab_size) if i < 3 + 256 or set(tok.id_to_piece(i)) <= {"▁"}]
    awkward += tok.encode("\n\n </s> \n", bos=False)
    rng = random.Random(0)
    stops = ["\n\n", "\n", "</s>"]
    for _ in range(2000):
        ids = [rng.choice(awkward) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randrange(0, 12))]
        full = gen.hf_decode(tok, ids)
        assert full == hf.decode(ids, skip_special_tokens=True), ids
        for k in range(len(ids)):
            prefix = gen.hf_decode(tok, ids[:k])
            for s in stops:
                if s in prefix:
                    assert gen.cut_at_stops(prefix, [s]) == gen.cut_at_stops(full, [s]), (ids, k, s)


def test_truthfulqa_references_equal_the_harness_on_every_question():
    pytest.importorskip("lm_eval")
    datasets = pytest.importorskip("datasets")
    from lm_eval.tasks.truthfulqa import utils

    records = gen.load_records("truthfulqa_gen", require(DATA))
    assert len(records) == 817
    theirs = utils.process_docs_gen(datasets.Dataset.from_list(records))
    for r, h in zip(records, theirs):
        d = gen.truthfulqa_doc(r)
        assert d["prompt"] == gen.TRUTHFULQA_QA_PROMPT + "\n\nQ: " + h["question"]
        assert (d["correct_answers"], d["incorrect_answers"]) == (h["correct_answers"], h["incorrect_answers"])


def test_early_stopping_equals_one_plain_generate():
    """Rows leaving their batch at a stop string (and the cache compacted under the others) give what one
    model.generate of max_gen_toks tokens per row alone, decoded and cut, gives."""
    model = load_model(STORIES, dtype=torch.float32)
    tok = Tokenizer(STORIES)
    docs = gen.load_docs("wmt16-en-de", require(DATA), 6) + gen.load_docs("truthfulqa_gen", DATA, 2)
    prompts = [d["prompt"] for d in docs]
    stops = ["\n", "</s>"]
    contexts = [ids[-(512 - 64):] for ids in tok.encode_batch(prompts, bos=True)]
    want = []
    for c in contexts:
        [row] = model.generate([c], 64, eos_id=tok.eos_id)
        want.append(gen.cut_at_stops(gen.hf_decode(tok, row[len(c):]), stops))
    for batch_size in (3, 8):
        got = gen.generate_until(model, tok, prompts, stops, max_gen_toks=64, batch_size=batch_size, progress=False)
        assert got == want


def test_wmt_loading(tmp_path):
    pair = tmp_path / "wmt" / "en-de"
    pair.mkdir(parents=True)
    (pair / "newstest2016.en").write_text("Hello .\nA\u2028B\n")
    (pair / "newstest2016.de").write_text("Hallo .\nC\n")
    docs = gen.load_docs("wmt16-en-de", tmp_path)
    assert docs[1]["prompt"] == "English phrase: A\u2028B\nGerman phrase:" and docs[1]["reference"] == " C"
    assert gen.load_docs("wmt16-de-en", tmp_path, 1) == [
        {"doc_id": 0, "prompt": "German phrase: Hallo .\nEnglish phrase:", "reference": " Hello ."}]
    (pair / "newstest2016.de").write_text("Hallo .\n")
    with pytest.raises(ValueError, match="newstest2016.en has 2 lines but .*newstest2016.de has 1"):
        gen.load_docs("wmt16-en-de", tmp_path)


def test_truthfulqa_loading(tmp_path):
    csv_path = tmp_path / "truthfulqa" / "TruthfulQA.csv"
    csv_path.parent.mkdir()
    header = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    csv_path.write_text("\ufeff" + header + 'A,B, Why? ,x,"Yes ; no.;",Maybe,s\nA,B,Skipped?,x,,Wrong,s\n')
    [doc] = gen.load_docs("truthfulqa_gen", tmp_path)
    assert doc["prompt"].endswith("\n\nQ: Why?") and doc["prompt"].startswith(gen.TRUTHFULQA_QA_PROMPT)
    assert doc["correct_answers"] == ["Yes.", "no.", "I have no comment."] and doc["incorrect_answers"] == ["Maybe."]
    csv_path.write_text(header.replace("Source", "Origin") + "A,B,Q,x,y,z,s\n")
    with pytest.raises(ValueError, match="no column 'Source'"):
        gen.load_docs("truthfulqa_gen", tmp_path)
    csv_path.write_text(header + "A,B,Q,x,y\n")
    with pytest.raises(ValueError, match="row 1 has fewer fields"):
        gen.load_docs("truthfulqa_gen", tmp_path)


def run_cli(*args):
    return subprocess.run([sys.executable, "eval/gen.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def cli_error(capsys, *args):
    """gen.py's entry point in this process: exit code 1 and one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as e:
        cli(gen.main, "gen.py", list(map(str, args)))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and err.startswith("gen.py: error: "), err
    return err


def test_cli_errors(tmp_path, capsys):
    assert "unknown task(s) nope" in cli_error(capsys, "--model", STORIES, "--tasks", "wmt16-de-en,nope",
                                               "--data_dir", tmp_path)
    err = cli_error(capsys, "--model", STORIES, "--tasks", "truthfulqa_gen", "--data_dir", tmp_path)
    assert str(tmp_path / "truthfulqa" / "TruthfulQA.csv") in err
    err = cli_error(capsys, "--model", tmp_path / "none", "--tasks", "wmt16-de-en", "--data_dir", require(DATA))
    assert str(tmp_path / "none") in err
    (tmp_path / "out").mkdir()
    err = cli_error(capsys, "--model", STORIES, "--tasks", "wmt16-de-en", "--data_dir", DATA, "--output",
                    tmp_path / "out")
    assert "is a directory" in err
    assert "--limit must be a positive integer, got 0" in cli_error(capsys, "--model", STORIES, "--tasks",
                                                                   "wmt16-de-en", "--data_dir", DATA, "--limit", "0")


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "sub" / "gen.json"
    p = run_cli("--model", STORIES, "--tasks", "truthfulqa_gen,wmt16-ro-en", "--data_dir", require(DATA),
                "--limit", "2", "--max_new_tokens", "16", "--output", out)
    assert p.returncode == 0, p.stderr
    assert "| truthfulqa_gen | 2 | bleu_acc * |" in p.stdout and "| wmt16-ro-en | 2 | bleu * |" in p.stdout
    saved = json.loads(out.read_text())
    model = load_model(STORIES, dtype=torch.float32)
    again = gen.evaluate(model, Tokenizer(STORIES), ["truthfulqa_gen", "wmt16-ro-en"], DATA, limit=2,
                         max_new_tokens=16, progress=False)
    assert saved["results"] == again["results"]
    assert saved["samples"] == again["samples"]
    assert saved["config"]["harness_version"] == "0.4.13" and saved["config"]["max_new_tokens"] == 16


def test_throughput_runs_both_sides_on_the_same_requests():
    """bench.py's entry: both sides run and agree (the timings themselves are not asserted)."""
    pytest.importorskip("lm_eval")
    r = gen.throughput(STORIES, ["wmt16-de-en"], require(DATA), limit=3, batch_size=2, max_new_tokens=24, repeats=1)
    assert r["documents"] == 3 and r["identical"] is True and r["ours_s"] > 0 and r["harness_s"] > 0
