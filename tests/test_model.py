"""model.py against transformers.LlamaForCausalLM: logits, checkpoints both ways, greedy generation, errors."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, STORIES
from checkpoint import load_model, save_model
from model import ModelArgs, Transformer, ChunkedCrossEntropy, sample

transformers = pytest.importorskip("transformers")

CONFIGS = {  # tiny random LLaMAs covering the family's variants
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2),
    # head_dim 16, theta 5e5: RoPE wavelengths 6.3, 32, 167, 860, ... with original length 256 fall in all three
    # llama3 regimes (kept < 64 < blended < 256 < slowed by `factor`)
    "llama3": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=1024,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
    "linear_rope": dict(num_attention_heads=4, num_key_value_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "head_dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24),  # head_dim != hidden/heads
}


def hf_model(seed=0, **overrides):
    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=3, max_position_embeddings=128,
               rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               attn_implementation="eager")
    cfg.update(overrides)
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).float().eval()
    with torch.no_grad():  # HF initialises norms to 1 and weights at std 0.02: randomise everything, larger
        for name, p in m.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return m


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(tmp_path, name):
    hf = hf_model(**CONFIGS[name])
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    idx = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        out = ours(idx)
    assert out.shape == ref.shape == (3, 40, 300)
    assert rel_err(out, ref) < 1e-4
    # the chunked per-token cross-entropy equals cross-entropy over the full logits
    with torch.no_grad():
        ce = ours(idx[:, :-1], idx[:, 1:], ce_chunk=7)
    ref_ce = F.cross_entropy(ref[:, :-1].reshape(-1, 300), idx[:, 1:].reshape(-1), reduction="none").view(3, 39)
    assert torch.allclose(ce, ref_ce, rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_both_ways(tmp_path):
    hf = hf_model(**CONFIGS["gqa"])
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = load_model(tmp_path / "hf")
    save_model(ours, tmp_path / "ours", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "ours" / "model.safetensors").exists()
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").float().eval()
    idx = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, hf(idx).logits)
    # re-saving unsharded over it leaves one consistent checkpoint
    save_model(ours, tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    assert rel_err(load_model(tmp_path / "ours")(idx), hf(idx).logits) < 1e-4


@pytest.mark.parametrize("name", ["tied", "llama3", "mha"])
def test_save_pretrained_round_trip_is_exact(tmp_path, name):
    hf = hf_model(**CONFIGS[name])
    hf.save_pretrained(tmp_path / "hf")
    save_model(load_model(tmp_path / "hf"), tmp_path / "ours")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").float().eval()
    sd, sd_back = hf.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:
        assert torch.equal(sd[k], sd_back[k]), k
    assert back.config.rope_scaling == hf.config.rope_scaling
    assert back.config.tie_word_embeddings == hf.config.tie_word_embeddings
    idx = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, hf(idx).logits)


def test_bf16_save_keeps_dtype(tmp_path):
    hf = hf_model(**CONFIGS["gqa"])
    hf.save_pretrained(tmp_path / "hf")
    m = load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters()) and m.rope_cos.dtype == torch.bfloat16
    save_model(m, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "bf16", torch_dtype=torch.bfloat16)
    for k, v in back.state_dict().items():
        assert torch.equal(v, hf.state_dict()[k].bfloat16()), k


def hf_greedy(hf, prompt, n, eos=2):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos,
                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    ids = out[0].tolist()
    new = ids[len(prompt):]
    return prompt + (new[:new.index(eos) + 1] if eos in new else new)


def test_stories260K_greedy_story_and_hf_parity():
    ours = load_model(STORIES)
    assert ours.args.n_kv_heads == 4 and ours.args.n_heads == 8 and ours.args.tie_word_embeddings
    from tokenizer import Tokenizer
    tok = Tokenizer(STORIES / "tokenizer.model")
    out = ours.generate([[tok.bos_id]], max_new_tokens=60, eos_id=tok.eos_id)[0]
    text = tok.decode(out)
    assert text.startswith("Once upon a time, there was a little girl named Lily."), text
    hf = transformers.LlamaForCausalLM.from_pretrained(STORIES).float().eval()
    # prompts of different lengths in one batch; each row must equal HF's greedy run on that prompt alone
    prompts = [[1], tok.encode("Once upon a time, a dog", bos=True), tok.encode("Tom and Sue went to the park", bos=True),
               tok.encode("The cat", bos=True)]
    batched = ours.generate(prompts, max_new_tokens=40, eos_id=tok.eos_id)
    for p, got in zip(prompts, batched):
        assert got == hf_greedy(hf, p, 40), tok.decode(p)


def test_generate_random_model_matches_hf_and_tensor_api(tmp_path):
    hf = hf_model(**CONFIGS["llama3"])
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 1)]
    for p, got in zip(prompts, ours.generate(prompts, 25, eos_id=[2, 7])):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=25, do_sample=False, eos_token_id=[2, 7], pad_token_id=2,
                          attention_mask=torch.ones(1, len(p), dtype=torch.long))[0].tolist()
        stop = next((i + 1 for i in range(len(p), len(ref)) if ref[i] in (2, 7)), len(ref))
        assert got == ref[:stop]
    # tensor in, tensor out: (B, T + n), identical to HF's batched greedy output on equal-length prompts
    idx = torch.randint(3, 300, (3, 8), generator=g)
    out = ours.generate(idx, 12)
    ref = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None,
                      attention_mask=torch.ones_like(idx))
    assert torch.equal(out, ref)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    assert sample(logits).tolist() == [3, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, top_k=2, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {2, 3} and set(draws[:, 1].tolist()) == {0, 1}
    # top_p: p = softmax([0,1,2,3]) = [.032, .087, .237, .644]; 0.7 keeps {3, 2}, 0.5 keeps {3}
    draws = torch.stack([sample(logits, 1.0, top_p=0.7, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {2, 3}
    assert set(torch.stack([sample(logits, 1.0, top_p=0.5, generator=g) for _ in range(50)])[:, 0].tolist()) == {3}


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_cross_entropy_value_and_grad(eps, dtype):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    t[[3, 10, 36]] = -1
    up = torch.rand(37, generator=g, dtype=dtype)  # arbitrary per-token weights, as the PLW loss applies
    ref = F.cross_entropy(h @ w.T, t, ignore_index=-1, reduction="none", label_smoothing=eps)
    (ref * up).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ce = ChunkedCrossEntropy.apply(h, w, t, eps, 8)
    (ce * up.float()).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-6  # the loss itself is always fp32
    assert torch.allclose(ce, ref.float(), rtol=tol, atol=tol)
    assert torch.allclose(h.grad, gh, rtol=tol, atol=tol) and torch.allclose(w.grad, gw, rtol=tol, atol=tol)


def test_chunked_cross_entropy_under_autocast_matches_autocast_cross_entropy():
    # train.py's dtype=bfloat16 with fp32 weights: the head's logits are bf16 (autocast), and backward, which runs
    # without autocast, must recompute exactly those logits: gradients as autocast's own F.cross_entropy gives them,
    # through the recompute (chunk 7) and the kept softmax (one chunk). Recomputed in fp32 they were 4-9% off
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(64, 32, generator=g) * 2).requires_grad_()
    w = torch.randn(500, 32, generator=g).requires_grad_()
    t = torch.randint(0, 500, (64,), generator=g)
    up = torch.rand(64, generator=g)

    def run(fn):
        h.grad = w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ce = fn()
        (ce * up).sum().backward()
        return ce.detach(), h.grad.clone(), w.grad.clone()

    ref = run(lambda: F.cross_entropy((h @ w.T).float(), t, reduction="none"))
    for chunk in (7, 10_000):
        out = run(lambda: ChunkedCrossEntropy.apply(h, w, t, 0.0, chunk))
        assert all(a.dtype == torch.float32 for a in out)
        for a, b in zip(out, ref):
            assert rel_err(a, b) < 1e-2, chunk


# ---------------------------------------------------------------------------------------------- broken checkpoints

def broken_copy(tmp_path, edit_tensors=None, edit_config=None):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "broken"
    shutil.copytree(STORIES, d)
    if edit_tensors:
        sd = load_file(d / "model.safetensors")
        edit_tensors(sd)
        save_file(sd, d / "model.safetensors")
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("case, message", [
    (dict(edit_tensors=lambda sd: sd.pop("model.layers.2.mlp.up_proj.weight")),
     "missing tensor(s) model.layers.2.mlp.up_proj.weight"),
    (dict(edit_tensors=lambda sd: sd.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)})),
     "unexpected tensor(s) model.layers.9.mlp.up_proj.weight"),
    (dict(edit_tensors=lambda sd: sd.update({"model.norm.weight": torch.ones(65)})),
     "tensor model.norm.weight has shape [65], expected [64]"),
    (dict(edit_config=lambda c: c.update(num_hidden_layers=6)), "missing tensor(s) model.layers.5."),
    (dict(edit_config=lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0})), "unsupported rope type 'yarn'"),
    (dict(edit_config=lambda c: c.update(model_type="mistral", architectures=["MistralForCausalLM"])),
     "unsupported architecture 'mistral'"),
    (dict(edit_config=lambda c: c.update(num_key_value_heads=3)), "not a multiple of num_key_value_heads 3"),
    (dict(edit_config=lambda c: c.update(hidden_act="gelu")), "unsupported hidden_act 'gelu'"),
    (dict(edit_config=lambda c: c.pop("hidden_size")), "hidden_size must be a positive integer"),
])
def test_broken_checkpoint_errors_name_the_problem(tmp_path, case, message):
    d = broken_copy(tmp_path, **case)
    with pytest.raises(ValueError) as e:
        load_model(d)
    assert message in str(e.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_model(tmp_path / "nope")
    d = broken_copy(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(d)


def test_load_needs_about_one_copy_of_memory(tmp_path):
    # a ~200 MB fp32 checkpoint, loaded in a fresh process: peak RSS grows by about its size, not twice
    args = ModelArgs(dim=1024, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=128, hidden_dim=2816, vocab_size=8000,
                     max_seq_len=64)
    m = Transformer(args)
    save_model(m, tmp_path)
    size = sum(p.numel() * 4 for p in m.parameters())
    del m
    code = ("import resource, sys; sys.path.insert(0, sys.argv[2]); import torch, checkpoint;"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "m = checkpoint.load_model(sys.argv[1]);"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) * 1024)")
    grown = int(subprocess.check_output([sys.executable, "-c", code, str(tmp_path), str(ROOT)]).split()[-1])
    assert size > 150e6 and grown < 1.3 * size, (grown, size)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_model_cross_entropy_paths_with_padding(tmp_path, eps):
    # model(idx, targets) skips padded targets in the head, and keeps the softmax for backward when every row
    # fits in one chunk: both paths must give cross-entropy's values and gradients, checked against float64
    hf = hf_model(**CONFIGS["gqa"])
    hf.save_pretrained(tmp_path)
    idx = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(5))
    targets = idx.roll(-1, 1)
    targets[0, 12:] = -1  # padding
    targets[2, 5:] = -1
    up = torch.rand(3, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref_m = load_model(tmp_path).double().train()
    ref = F.cross_entropy(ref_m(idx).reshape(-1, 300), targets.reshape(-1), ignore_index=-1, reduction="none",
                          label_smoothing=eps).view(3, 20)
    (ref * up).sum().backward()
    for chunk in (7, 10_000):  # several chunks (recompute in backward) / one chunk (softmax kept)
        m = load_model(tmp_path).train()
        ce = m(idx, targets, label_smoothing=eps, ce_chunk=chunk)
        (ce * up.float()).sum().backward()
        assert (ce[targets < 0] == 0).all()
        assert rel_err(ce.double(), ref) < 1e-5
        for k, p in ref_m.named_parameters():
            assert rel_err(dict(m.named_parameters())[k].grad.double(), p.grad) < 1e-5, (chunk, k)


def test_activation_checkpointing_gives_the_same_gradients():
    # with dropout on: the recompute in backward must draw the same masks
    grads = []
    for ckpt in (False, True):
        m = load_model(STORIES).train()
        for mod in m.modules():
            if hasattr(mod, "dropout"):
                mod.dropout = 0.2
        m.activation_checkpointing = ckpt
        idx = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        m(idx[:, :-1], idx[:, 1:]).sum().backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k
