"""Mixtral (sparse mixture of experts) in model.py against transformers.MixtralForCausalLM: logits of tiny random
configs in fp32, sharded HF checkpoints both ways, batched greedy and beam-search generation with the KV cache."""
import json

import pytest
import torch

from checkpoint import load_model, save_model
from conftest import randomise
from model import MoEFeedForward
from test_beam import hf_alone

ONE_THREAD = True
transformers = pytest.importorskip("transformers")

CONFIGS = {
    "top2_of_8": dict(num_local_experts=8, num_experts_per_tok=2, num_key_value_heads=2),     # Mixtral 8x7B's routing
    "top3_of_4_window": dict(num_local_experts=4, num_experts_per_tok=3, num_key_value_heads=4, sliding_window=64,
                             rope_theta=10000.0, tie_word_embeddings=True),
}


def hf_mixtral(seed=0, **overrides):
    cfg = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    cfg.update(overrides)
    torch.manual_seed(seed)
    m = transformers.MixtralForCausalLM(transformers.MixtralConfig(**cfg)).float().eval()
    randomise(m, seed)
    return m


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(tmp_path, name):
    hf = hf_mixtral(**CONFIGS[name])
    hf.save_pretrained(tmp_path, max_shard_size="100KB")  # sharded, as the 8x7B checkpoints are
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_model(tmp_path)
    a = ours.args
    assert (a.n_experts, a.n_experts_per_tok) == (CONFIGS[name]["num_local_experts"],
                                                 CONFIGS[name]["num_experts_per_tok"])
    assert isinstance(ours.layers[0].block_sparse_moe, MoEFeedForward) and not hasattr(ours.layers[0], "mlp")
    T = min(40, a.max_seq_len)
    idx = torch.randint(0, 300, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = hf(idx).logits, ours(idx)
        # every expert is used and tokens differ in their choice, so the routing is really exercised
        chosen = torch.topk(ours.layers[0].block_sparse_moe.gate(ours.embed_tokens(idx)), a.n_experts_per_tok).indices
    assert chosen.unique().numel() == a.n_experts
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-4
    with torch.no_grad():  # the chunked per-token cross-entropy path too
        ce = ours(idx[:, :-1], idx[:, 1:])
    ref_ce = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, 300), idx[:, 1:].reshape(-1), reduction="none")
    assert torch.allclose(ce.view(-1), ref_ce, rtol=1e-5, atol=1e-5)


def test_save_round_trip_through_transformers(tmp_path):
    hf = hf_mixtral(**CONFIGS["top3_of_4_window"])
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.args.max_seq_len == 64  # the sliding window bounds the context: attention within it is plain causal
    save_model(ours, tmp_path / "ours", max_shard_bytes=100_000)
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"] and cfg["sliding_window"] == 64
    back = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").float()
    sd, sd_back = hf.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys() and all(torch.equal(sd[k], sd_back[k]) for k in sd)


def test_generation_with_the_cache_matches_transformers(tmp_path):
    hf = hf_mixtral(**CONFIGS["top2_of_8"])
    with torch.no_grad():
        hf.lm_head.weight[2] *= 1.6  # EOS likelier: rows end at different lengths
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (6, 19, 1, 11)]
    for kw in (dict(), dict(num_beams=4, early_stopping=True, repetition_penalty=1.2)):  # greedy; PandaLM's beams
        for p, o in zip(prompts, ours.generate(prompts, 24, eos_id=2, **kw)):
            assert o == hf_alone(hf, p, 24, [2], **kw), kw


def test_bad_mixtral_configs(tmp_path):
    from checkpoint import args_from_hf_config
    base = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300, "num_local_experts": 4,
            "num_experts_per_tok": 2}
    assert args_from_hf_config(base).rope_theta == 1e6  # MixtralConfig's defaults, not LlamaConfig's
    with pytest.raises(ValueError, match="num_experts_per_tok 5 exceeds num_local_experts 4"):
        args_from_hf_config({**base, "num_experts_per_tok": 5})
    with pytest.raises(ValueError, match="num_local_experts must be a positive integer, got None"):
        args_from_hf_config({k: v for k, v in base.items() if k != "num_local_experts"})
    with pytest.raises(ValueError, match="unsupported architecture 'mixtral' / \\['LlamaForCausalLM'\\]"):
        args_from_hf_config({**base, "architectures": ["LlamaForCausalLM"]})
