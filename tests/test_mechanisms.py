"""eval/memorization.py, eval/generate.py and eval/distance.py on the stories260K fixture: BLEU of the model's own
greedy outputs is 100, batching changes nothing, lengths and distances equal independent computations, and bad
input fails cleanly through the command lines."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, STORIES
from data.prepare import format_prompt
from eval.distance import weight_distance
from eval.generate import complete, load_model_and_tokenizer, prompt_ids
from eval.memorization import memorization, sample_indices, summarize
from checkpoint import checkpoint_files, load_model, save_model
from model import ModelArgs, Transformer

RECORDS = [  # short Alpaca-format records, prompts of 55-110 tok512 tokens, with and without input
    {"instruction": "Tell a story about a cat.", "input": "", "output": "Once upon a time, there was a cat."},
    {"instruction": "Write a sentence about the sun.", "input": "", "output": "The sun is big and hot."},
    {"instruction": "Continue the story.", "input": "Lily went to the park with her mom.",
     "output": "She saw a big dog and they played with a ball."},
    {"instruction": "What did Tom find?", "input": "Tom found a red ball under the tree.", "output": "A red ball."},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "Describe a happy day at the beach with a family and their little dog.", "input": "",
     "output": "The family built a sand castle and the dog ran in the waves."},
    {"instruction": "Rewrite the sentence.", "input": "The bird sang a song in the morning.",
     "output": "In the morning, the bird sang a song."},
]
MAX_NEW = 40


ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


@pytest.fixture(scope="module")
def stories():
    return load_model_and_tokenizer(STORIES, device="cpu")  # (model, tokenizer), float32


def run_cli(script, *args):
    return subprocess.run([sys.executable, f"eval/{script}", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path

# -----------------------------------------------------------------------------
# memorization and generation


def test_sample_indices_seeded_nested_and_in_file_order():
    a = sample_indices(1000, 50, seed=3)
    assert a == sample_indices(1000, 50, seed=3)
    assert a != sample_indices(1000, 50, seed=4)
    assert a == sorted(a) and len(set(a)) == 50 and 0 <= a[0] and a[-1] < 1000
    # the documented draw: the first n of numpy's seeded permutation, so a smaller n is a subset of a larger one
    assert a == sorted(np.random.default_rng(3).permutation(1000)[:50].tolist())
    assert set(sample_indices(1000, 20, seed=3)) <= set(a)
    assert sample_indices(7, 7, seed=0) == sample_indices(7, 100, seed=5) == list(range(7))


def test_batched_generation_equals_one_at_a_time(stories):
    model, tok = stories
    prompts = prompt_ids(tok, RECORDS)
    # a prompt so long that the 512-token context leaves it fewer than MAX_NEW tokens: it gets its own batch
    long = tok.encode(format_prompt("Tell a story. " * 50), bos=True)
    assert 512 - MAX_NEW < len(long) < 512 - 5
    prompts.append(long)
    assert len({len(p) for p in prompts}) >= 5
    batched = complete(model, tok, prompts, MAX_NEW, batch_size=3, progress=False)
    for p, got in zip(prompts, batched):
        budget = min(MAX_NEW, 512 - len(p))
        alone = model.generate([p], budget, eos_id=tok.eos_id)[0][len(p):]
        assert got["eos"] == (alone[-1:] == [tok.eos_id])
        assert got["tokens"] == alone[:len(alone) - got["eos"]]
        assert len(got["tokens"]) + got["eos"] <= budget
        # the exact continuation: decode(new) alone only loses a leading space
        assert got["text"] in (tok.decode(got["tokens"]), " " + tok.decode(got["tokens"]))
        assert tok.decode(p + got["tokens"]).endswith(got["text"])
    model.train()  # a model in the middle of training is generated from in eval mode and handed back as it was
    try:
        assert complete(model, tok, prompts[:2], MAX_NEW, progress=False) == batched[:2] and model.training
    finally:
        model.eval()


def test_length_statistics_hand_checked():
    sacrebleu = pytest.importorskip("sacrebleu")
    samples = [  # generation words 3, 1, 5, 0; reference words 4, 2, 5, 1
        {"generation": " the cat sat", "reference": "the cat sat down", "gen_tokens": 4, "ref_tokens": 5, "eos": True},
        {"generation": "dog", "reference": "a dog", "gen_tokens": 10, "ref_tokens": 2, "eos": False},
        {"generation": "one two  three\nfour five", "reference": "one two three four five",
         "gen_tokens": 7, "ref_tokens": 6, "eos": True},
        {"generation": "", "reference": "hi", "gen_tokens": 0, "ref_tokens": 1, "eos": True},
    ]
    s = summarize(samples)
    assert s["gen_tokens_mean"] == 21 / 4 and s["gen_tokens_median"] == 5.5
    assert s["gen_words_mean"] == 9 / 4 and s["gen_words_median"] == 2.0
    assert s["ref_tokens_mean"] == 14 / 4 and s["ref_tokens_median"] == 3.5
    assert s["ref_words_mean"] == 12 / 4 and s["ref_words_median"] == 3.0
    assert s["hit_max_new_tokens"] == 0.25
    ref = sacrebleu.corpus_bleu([x["generation"] for x in samples], [[x["reference"] for x in samples]]).score
    assert 0 < s["bleu"] < 100 and abs(s["bleu"] - ref) < 1e-9


def test_memorization_own_greedy_outputs_score_100(stories, tmp_path):
    model, tok = stories
    res = memorization(model, tok, RECORDS, n=6, seed=1, max_new_tokens=MAX_NEW, batch_size=4, progress=False)
    idx = sample_indices(len(RECORDS), 6, seed=1)
    assert [s["index"] for s in res["samples"]] == idx and res["n"] == 6
    for s in res["samples"]:
        r = RECORDS[s["index"]]
        assert (s["instruction"], s["input"], s["reference"]) == (r["instruction"], r["input"], r["output"])
        p = format_prompt(r["instruction"], r["input"])
        assert s["ref_tokens"] == len(tok.encode(p + r["output"])) - len(tok.encode(p))
    assert res["hit_max_new_tokens"] == np.mean([not s["eos"] for s in res["samples"]])
    assert res["gen_tokens_mean"] == np.mean([s["gen_tokens"] for s in res["samples"]])
    assert 0 <= res["bleu"] < 100  # a stories model does not know Alpaca's answers
    assert sum(len(s["generation"].split()) for s in res["samples"]) > 20

    # the generations as training completions, through the command line: hypotheses == references -> BLEU 100
    own = [{**RECORDS[s["index"]], "output": s["generation"]} for s in res["samples"]]
    data, out = write_json(tmp_path / "own.json", own), tmp_path / "res" / "mem.json"
    r = run_cli("memorization.py", "--model", STORIES, "--data", data, "--n", 100, "--max_new_tokens", MAX_NEW,
                "--batch_size", 2, "--device", "cpu", "--output", out)
    assert r.returncode == 0, r.stderr
    again = json.loads(out.read_text())
    # every n-gram matches and the lengths agree; the score is exp(mean log 100), which is 100 up to its last bit
    assert again["bleu_precisions"] == [100.0] * 4 and again["bleu_bp"] == 1.0
    assert abs(again["bleu"] - 100) < 1e-12 and "BLEU 100.00" in r.stdout
    assert [s["generation"] for s in again["samples"]] == [s["generation"] for s in res["samples"]]
    assert again["model"] == str(STORIES) and again["n"] == 6 and again["dtype"] == "float32"
    assert again["gen_tokens_mean"] == res["gen_tokens_mean"]


def test_generate_writes_alpaca_eval_format(stories, tmp_path):
    model, tok = stories
    prompts = [{"instruction": r["instruction"], "output": "a reference answer", "generator": "gpt4",
                "dataset": "helpful_base"} for r in RECORDS[:3]] + [RECORDS[3]]
    src, out = write_json(tmp_path / "alpaca_eval.json", prompts), tmp_path / "outputs.json"
    r = run_cli("generate.py", "--model", STORIES, "--prompts", src, "--output", out, "--generator", "plw-test",
                "--max_new_tokens", MAX_NEW, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    expected = complete(model, tok, prompt_ids(tok, prompts), MAX_NEW, progress=False)
    assert len(rows) == 4
    for p, row, e in zip(prompts, rows, expected):
        keys = {"instruction", "output", "generator"} | ({"dataset"} if "dataset" in p else {"input"})
        assert set(row) == keys and row["generator"] == "plw-test"
        assert row["instruction"] == p["instruction"] and row.get("dataset") == p.get("dataset")
        assert row["output"] == e["text"].strip() and row["output"]
    assert rows[3]["input"] == RECORDS[3]["input"]

# -----------------------------------------------------------------------------
# weight distance


def direct_distance(model_dir, base_dir):
    """Full state dicts in float64 and torch's norms: {group or "overall": (l2, l2_rel, l1, l1_rel)}."""
    def load(d):
        sd = {}
        for f in checkpoint_files(d):
            sd.update(load_file(f))
        return {k: v.double() for k, v in sd.items()}

    def group(k):
        for key, g in (("embed_tokens", "embeddings"), ("lm_head", "head"), ("self_attn", "attention"),
                       ("mlp", "mlp"), ("norm", "norms")):
            if key in k:
                return g

    m, b = load(model_dir), load(base_dir)
    assert m.keys() == b.keys()
    out = {}
    for g in {group(k) for k in m} | {"overall"}:
        keys = [k for k in m if g in ("overall", group(k))]
        d = torch.cat([(m[k] - b[k]).flatten() for k in keys])
        base = torch.cat([b[k].flatten() for k in keys])
        l2, l1 = torch.linalg.vector_norm(d, 2).item(), torch.linalg.vector_norm(d, 1).item()
        out[g] = (l2, l2 / torch.linalg.vector_norm(base, 2).item(), l1, l1 / torch.linalg.vector_norm(base, 1).item())
    return out


def assert_matches_direct(res, direct):
    assert set(res["groups"]) | {"overall"} == set(direct)
    for g, want in direct.items():
        r = res["overall"] if g == "overall" else res["groups"][g]
        for got, exp in zip((r["l2"], r["l2_rel"], r["l1"], r["l1_rel"]), want):
            assert exp > 0 and abs(got - exp) <= 1e-9 * exp, (g, got, exp)


def perturbed(model, seed, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_distance_zero_against_itself(tmp_path):
    res = weight_distance(STORIES, STORIES, progress=False)
    assert res["tied_head"] and set(res["groups"]) == {"embeddings", "attention", "mlp", "norms"}
    for r in [res["overall"], *res["groups"].values(), *res["tensors"].values()]:
        assert r["l2"] == r["l1"] == r["l2_rel"] == r["l1_rel"] == 0.0
    assert res["overall"]["numel"] == sum(p.numel() for p in load_model(STORIES).parameters())
    # an in-memory model against its own checkpoint, and a sharded bfloat16 copy against a bfloat16 Transformer
    model = load_model(STORIES)
    assert weight_distance(model, STORIES, progress=False)["overall"]["l1"] == 0.0
    save_model(model, tmp_path, dtype=torch.bfloat16, max_shard_bytes=50_000)
    assert weight_distance(tmp_path, model.to(torch.bfloat16), progress=False)["overall"]["l1"] == 0.0


def test_distance_matches_direct_computation(tmp_path):
    # stories260K (tied head) against a perturbed, sharded copy
    save_model(perturbed(load_model(STORIES), seed=0), tmp_path / "tied", max_shard_bytes=100_000)
    assert len(checkpoint_files(tmp_path / "tied")) > 1
    res = weight_distance(tmp_path / "tied", STORIES, progress=False)
    assert res["tied_head"] and "head" not in res["groups"]
    assert_matches_direct(res, direct_distance(tmp_path / "tied", STORIES))

    # an untied model, base in bfloat16 and fine-tuned in float32, with a few rows per read (chunked tensors)
    torch.manual_seed(0)
    base = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=48,
                                 vocab_size=64, max_seq_len=64))
    save_model(base, tmp_path / "base", dtype=torch.bfloat16)
    base = load_model(tmp_path / "base", dtype=torch.float32)
    save_model(perturbed(base, seed=1, scale=0.003), tmp_path / "ft", max_shard_bytes=20_000)
    import eval.distance as distance
    old, distance.CHUNK = distance.CHUNK, 100
    try:
        res = weight_distance(tmp_path / "ft", tmp_path / "base", progress=False)
    finally:
        distance.CHUNK = old
    assert not res["tied_head"] and set(res["groups"]) == {"embeddings", "attention", "mlp", "norms", "head"}
    assert_matches_direct(res, direct_distance(tmp_path / "ft", tmp_path / "base"))


def test_distance_refuses_different_tensor_sets(tmp_path):
    args = load_model(STORIES).args
    save_model(Transformer(ModelArgs(**{**vars(args), "n_layers": 4})), tmp_path)
    with pytest.raises(ValueError, match=r"layers\.4\..* only in the base"):
        weight_distance(tmp_path, STORIES, progress=False)

# -----------------------------------------------------------------------------
# bad input through the command lines: exit 1, one line, no traceback, no output file


def test_cli_errors(tmp_path):
    data = write_json(tmp_path / "data.json", RECORDS)
    args = load_model(STORIES).args
    save_model(Transformer(ModelArgs(**{**vars(args), "n_kv_heads": 8})), tmp_path / "mha")
    out = tmp_path / "out.json"
    cases = [
        ("memorization.py", ["--model", tmp_path / "nope", "--data", data], "nope"),
        ("memorization.py", ["--model", STORIES, "--data", tmp_path / "missing.json"], "missing.json"),
        ("memorization.py", ["--model", STORIES, "--data", data, "--n", 0], "--n"),
        ("generate.py", ["--model", STORIES, "--prompts", data.with_name("nothing.json")], "nothing.json"),
        ("distance.py", ["--model", tmp_path / "mha", "--base", STORIES], "model.layers.0.self_attn.k_proj.weight"),
        ("distance.py", ["--model", STORIES, "--base", tmp_path / "nope"], "nope"),
    ]
    for script, argv, named in cases:
        r = run_cli(script, *argv, "--output", out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, (script, r.stderr)
        assert lines[0].startswith(f"{script}: error:") and named in lines[0], lines[0]
        assert not out.exists() and r.stdout == ""
    assert not any(p.name.startswith(".out.json") for p in tmp_path.iterdir())
