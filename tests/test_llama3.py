"""LLaMA 3 end to end on a tiny random LLaMA-3-shaped model (GQA, rope_theta 500000, llama3 rope scaling, the real
128,256-token vocabulary) laid out as Meta's HF repositories are: config.json + model.safetensors, the tiktoken file
as original/tokenizer.model, and an HF fast tokenizer (tokenizer.json, built by transformers' TikTokenConverter).

- The HF fast tokenizer equals ours (so the harness and we see the same ids).
- eval/mc.py equals lm-evaluation-harness 0.4.13 (hf backend, fast tokenizer) per request: strings, every
  log-likelihood, every prediction; also with left truncation.
- data/prepare.py equals Stanford Alpaca's preprocessing run on the HF tokenizer at the prompt/output seam, where
  BPE merges much more than sentencepiece (":The", ":\\n", "::").
- eval/generate.py stops on every EOS id of an instruct model's config.json; data/stats.py runs.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoint import load_model, save_model
from conftest import EVAL_HF, ROOT, SHARED, require, run_harness
from data.prepare import format_prompt, prepare_dataset
from eval import mc
from model import ModelArgs, Transformer
from tokenizer import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, Tokenizer

LLAMA3_TOKENIZER = SHARED / "data" / "tokenizer" / "llama3" / "tokenizer.model"
HARNESS_REF = ROOT / "tests" / "fixtures" / "mc" / "harness_ref.py"
FIRST = {"arc_easy": 3, "piqa": 2, "winogrande": 3, "hellaswag": 2, "boolq": 2, "openbookqa": 3}
RUNS = {"plain": (list(FIRST), None, None), "truncated": (["hellaswag", "boolq"], 2, 48)}


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


def hf_fast_tokenizer(path):
    """LLaMA 3's HF tokenizer as Meta ships it: byte-level BPE from the tiktoken file, <|begin_of_text|> prepended
    by the post-processor, the 256 special tokens added."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tiktoken")  # the converter reads the file with it
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tk = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN,
                           additional_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", 128000)])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>",
                                                eos_token="<|end_of_text|>")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama3")
    tok_file = require(LLAMA3_TOKENIZER)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128, vocab_size=128256,
                     norm_eps=1e-5, rope_theta=500000.0, max_seq_len=4096, tie_word_embeddings=False,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
                     bos_id=128000, eos_id=128001)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():  # larger and varied weights, so that choices differ clearly
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    save_model(model, path)
    (path / "original").mkdir()
    shutil.copy(tok_file, path / "original" / "tokenizer.model")
    hf_fast_tokenizer(tok_file).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_tok(llama3_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(llama3_dir)  # what the harness loads


def lines_of(path):
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]  # not splitlines: U+2028


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    require(EVAL_HF)
    dst = tmp_path_factory.mktemp("mc_data")
    for name, n in FIRST.items():
        (dst / f"{name}.jsonl").write_text("\n".join(lines_of(EVAL_HF / f"{name}.jsonl")[:n]) + "\n")
    return dst


# -----------------------------------------------------------------------------
# the HF tokenizer the harness uses, against ours

def test_hf_fast_tokenizer_is_ours(llama3_dir, hf_tok, subset):
    ours = Tokenizer(llama3_dir)
    assert (ours.kind, ours.path) == ("tiktoken", str(llama3_dir / "original" / "tokenizer.model"))
    assert (ours.vocab_size, ours.bos_id, ours.eos_id) == (len(hf_tok), hf_tok.bos_token_id, hf_tok.eos_token_id)
    texts = ["Hello world", " Answer: yes  two", "'S 'Ll 'd", "a\r\n\r\n b", "😀 中文 1234567", "x   ", "\n\nQ: a?\nA:",
             "### Response:The", "### Response::", "### Response:\n1", "\u00a0\u2028\x1c é\u0301"]
    for task in FIRST:
        for doc in mc.load_docs(task, subset):
            texts += [c + k for c, k in zip(doc["contexts"], doc["continuations"])] + doc["contexts"]
    for t in texts:
        ids = ours.encode(t, bos=True)
        assert ids == hf_tok.encode(t), t
        assert hf_tok.decode(ids, skip_special_tokens=True) == ours.decode(ids[1:]) == t, t


# -----------------------------------------------------------------------------
# eval/mc.py against the harness

@pytest.fixture(scope="module")
def harness(llama3_dir, subset, tmp_path_factory):
    pytest.importorskip("lm_eval")
    work = tmp_path_factory.mktemp("harness")
    spec = {"model": str(llama3_dir), "data_dir": str(subset), "work": str(work), "use_fast_tokenizer": True,
            "batch_size": 2,  # (batch, T, 128256) fp32 logits: keep them small
            "runs": [{"tasks": t, "limit": lim, "max_length": ml} for t, lim, ml in RUNS.values()]}
    return dict(zip(RUNS, run_harness(HARNESS_REF, spec, work)))


@pytest.mark.parametrize("run", list(RUNS))
def test_mc_equals_harness(run, harness, llama3_dir, subset):
    tasks, limit, max_length = RUNS[run]
    model = load_model(llama3_dir, dtype=torch.float32)
    assert model.args.vocab_size == 128256 and model.args.n_kv_heads == 2
    out = mc.evaluate(model, Tokenizer(llama3_dir), tasks, subset, limit=limit, max_length=max_length,
                      batch_size=4, batch_tokens=1024, progress=False)
    ref = harness[run]
    assert ref["version"] == mc.HARNESS_VERSION
    for task in tasks:
        docs, mine, theirs = mc.load_docs(task, subset, limit), out["samples"][task], ref["samples"][task]
        assert len(docs) == len(mine) == len(theirs) > 0, task
        for doc, m, h in zip(docs, mine, theirs):
            where = (task, doc["doc_id"], m["lls"], h["lls"])
            assert [list(r) for r in zip(doc["contexts"], doc["continuations"])] == h["arguments"], where
            np.testing.assert_allclose(m["lls"], h["lls"], rtol=0, atol=1e-4, err_msg=str(where))
            lengths = np.array([len(c) for c in doc["choices"]], dtype=float)
            assert np.argmax(m["lls"]) == np.argmax(h["lls"]), where
            assert np.argmax(np.array(m["lls"]) / lengths) == np.argmax(np.array(h["lls"]) / lengths), where
            assert (m["acc"], m.get("acc_norm")) == (h["acc"], h["acc_norm"]), where
        r, hr = out["results"][task], ref["results"][task]
        assert (r["n"], r["acc"], r["acc_norm"]) == (hr["n"], hr["acc"], hr["acc_norm"]), task


# -----------------------------------------------------------------------------
# data: the prompt / output seam, against Stanford's preprocessing on the HF tokenizer

# outputs that meet "### Response:" in every way BPE can join or split them
SEAM_OUTPUTS = [":", "::", ": x", " leading space", "  two spaces", "\nnewline", "\n\nTwo", "\r\nCRLF", "123", "1.5",
                "12345", "The answer", "I think", "'s fine", "'S", "'ll", "😀 emoji", "-1", "[5, 8]", "\"quoted\"",
                "...", "中文", "é", "\t tab", "#1", "x", "", "  "]


def stanford_preprocess(hf_tok, source, output):
    """Stanford Alpaca's train.py on one example: tokenize source + output + eos_token (the fast tokenizer reads
    the "<|end_of_text|>" string as the special token) and IGNORE the first len(tokenize(source)) labels."""
    ids = hf_tok(source + output + hf_tok.eos_token).input_ids
    n_source = len(hf_tok(source).input_ids)
    return ids, [i >= n_source for i in range(len(ids))]


def test_prepare_seam_equals_stanford(llama3_dir, hf_tok, tmp_path):
    records = [{"instruction": "Say it.", "input": "" if i % 2 else "Some input", "output": o}
               for i, o in enumerate(SEAM_OUTPUTS)]
    src = tmp_path / "seam.json"
    src.write_text(json.dumps(records))
    train, _, report = prepare_dataset(src, llama3_dir, max_seq_len=None, cache_dir=tmp_path, verbose=False)
    tok = Tokenizer(llama3_dir)
    merges = 0
    for i, r in enumerate(records):
        lo, hi = train["offsets"][i], train["offsets"][i + 1]
        tokens, roles = train["tokens"][lo:hi].tolist(), train["roles"][lo:hi].tolist()
        prompt = format_prompt(r["instruction"], r["input"])
        ids, is_target = stanford_preprocess(hf_tok, prompt, r["output"])
        assert tokens == ids and tokens == tok.encode(prompt + r["output"], bos=True, eos=True), r["output"]
        assert roles == [int(t) for t in is_target], r["output"]
        p, f = tok.encode(prompt), tok.encode(prompt + r["output"])
        merges += f[:len(p)] != p
    assert report["boundary_merges"] == merges
    # BPE joins ":" with a symbol, a newline or letters after it, never with a space or a digit
    by_output = {r["output"]: i for i, r in enumerate(records)}

    def seam_token(output):
        i = by_output[output]
        n_prompt = int((train["roles"][train["offsets"][i]:train["offsets"][i + 1]] == 0).sum())
        return tok.decode(train["tokens"][train["offsets"][i] + n_prompt - 1:][:1])
    assert seam_token("::") == ":::" and seam_token("\nnewline") == ":\n" and seam_token("The answer") == ":The"
    assert seam_token(" leading space") == ":" and seam_token("123") == ":" and seam_token("") == ":"


def test_prepare_alpaca_sample_and_stats(llama3_dir, tmp_path, capsys):
    """The committed 2k-record sample through prepare_dataset (a model dir as the tokenizer) and data/stats.py."""
    from data import stats

    sample = ROOT / "data" / "samples" / "alpaca_2k.json"
    train, val, report = prepare_dataset(sample, llama3_dir, max_seq_len=512, val_size=100, cache_dir=tmp_path,
                                         verbose=False)
    assert report["n_train"] == 1900 and report["n_val"] == 100 and not report["cache_hit"]
    assert train["tokens"].max() < 128256 and (train["tokens"][train["offsets"][:-1]] == 128000).all()
    again = prepare_dataset(sample, llama3_dir, max_seq_len=512, val_size=100, cache_dir=tmp_path, verbose=False)
    assert again[2]["cache_hit"] and (again[0]["tokens"] == train["tokens"]).all()
    # the dir's config.json chose BOS / EOS, so they are part of the cache key: the bare file has its own entry
    bare = prepare_dataset(sample, llama3_dir / "original" / "tokenizer.model", max_seq_len=512, val_size=100,
                           cache_dir=tmp_path, verbose=False)
    assert not bare[2]["cache_hit"] and bare[2]["cache"] != report["cache"]
    assert (bare[0]["tokens"] == train["tokens"]).all()  # the same ids here: config.json says 128000 / 128001
    assert stats.main(["--tokenizer", str(llama3_dir), "--json", str(sample)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    tok = Tokenizer(llama3_dir)
    records = json.loads(sample.read_text())
    want = np.mean([len(tok.encode(r["output"])) for r in records])
    assert row["n"] == 2000 and row["completion_tokens_mean"] == pytest.approx(want)


# -----------------------------------------------------------------------------
# generation: an instruct model's config.json lists two EOS ids

class StopAt:
    """A stand-in model whose generate appends [40, stop] (as model.generate does when a row hits an eos id)."""

    def __init__(self, stop):
        self.stop, self.args, self.training = stop, ModelArgs(max_seq_len=64), False
        self.lm_head = torch.nn.Linear(1, 1)

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, idx, max_new_tokens, eos_id=None, **kw):
        self.eos_id = eos_id
        return [list(p) + [40, self.stop] for p in idx]


def test_generation_stops_on_every_eos_id(tmp_path):
    from eval.generate import complete

    (tmp_path / "original").mkdir()
    shutil.copy(require(LLAMA3_TOKENIZER), tmp_path / "original" / "tokenizer.model")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}))
    tok = Tokenizer(tmp_path)
    for stop in (128001, 128009):
        model = StopAt(stop)
        [out] = complete(model, tok, [tok.encode("Hi", bos=True)], max_new_tokens=8, progress=False)
        assert model.eos_id == [128001, 128009]
        assert out == {"text": "I", "tokens": [40], "eos": True}


def test_train_exports_a_llama3_model_transformers_loads(llama3_dir, tmp_path):
    # train.py end to end with the tiktoken-format tokenizer: trains, exports, and the export (weights, config, the
    # tokenizer file and the HF tokenizer files) loads in transformers with our logits
    transformers = pytest.importorskip("transformers")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(json.loads((ROOT / "data" / "samples" / "alpaca_2k.json").read_text())[:16]))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", "configs/tiny_stories.py", f"--init_from={llama3_dir}",
                        f"--dataset={data}", f"--out_dir={out}", "--max_iters=2", "--batch_size=4",
                        "--global_batch_size=8", "--max_seq_len=128", "--warmup_iters=0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(row["loss"]) for row in rows)
    assert Tokenizer(out).kind == "tiktoken" and (out / "tokenizer.json").is_file()
    ours = load_model(out)
    hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    ids = Tokenizer(out).encode("Below is an instruction that describes a task.", bos=True)
    assert transformers.AutoTokenizer.from_pretrained(out)("Below is an instruction that describes a task.").input_ids == ids
    idx = torch.tensor([ids])
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    assert any(not torch.equal(p, q) for p, q in zip(ours.parameters(), load_model(llama3_dir).parameters()))
