"""
How far fine-tuning moved the weights: L2 and L1 distance between a fine-tuned model and its base, overall and
per parameter group, absolute and relative to the base's own norm.

    python eval/distance.py --model out/plw01 --base ../Llama-2-7b-hf --output dist.json

For Δ = model - base over the tensors of a group:
    L2 = sqrt(Σ Δ²)    rel L2 = L2 / sqrt(Σ base²)    L1 = Σ |Δ|    rel L1 = L1 / Σ |base|
Groups (by tensor name): embeddings (embed_tokens), attention (q/k/v/o_proj), mlp (gate/up/down_proj),
norms (the RMSNorm weights), head (lm_head; none when the head is tied to the embeddings, whose one tensor is then
counted under embeddings), other (anything else; absent for LLaMA). Overall covers every tensor once.

Both checkpoints are streamed from their safetensors files (single or sharded), a slice of rows at a time, and
every sum is accumulated in float64 from exactly upcast values, so two 7B checkpoints need a few hundred MB of
memory, not 2 x 13 GB, and bf16 and fp32 checkpoints compare exactly. The two must hold the same tensors with the
same shapes (dtypes may differ); anything else is refused, naming the tensor.
"""
import argparse
import contextlib
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from checkpoint import checkpoint_files, hf_key, our_key
from util import check_writable, cli, write_json

GROUPS = ("embeddings", "attention", "mlp", "norms", "head", "other")
CHUNK = 2 ** 22  # elements read and upcast at once: 32 MB per float64 buffer, a handful of buffers alive


def group_of(key):
    name = our_key(key)
    if name.startswith("embed_tokens."):
        return "embeddings"
    if name.startswith("lm_head."):
        return "head"
    if re.search(r"\.self_attn\.[qkvo]_proj\.", name):
        return "attention"
    if re.search(r"\.mlp\.(gate|up|down)_proj\.", name):
        return "mlp"
    if "norm" in name:
        return "norms"
    return "other"


def _tensors(src, stack, what):
    """A checkpoint as {HF key: (shape, read)}, read(a, b) giving rows a:b of the tensor (any dtype, on the CPU).
    src: an HF directory (tensors stay on disk, memory-mapped), a Transformer, or a state_dict (our or HF keys)."""
    tied = None
    if isinstance(src, torch.nn.Module):
        tied = src.args.tie_word_embeddings
        src = src.state_dict()
    if isinstance(src, dict):
        out = {hf_key(our_key(k)): (tuple(v.shape), lambda a, b, v=v: v[a:b].cpu()) for k, v in src.items()}
    else:
        path = Path(src)
        if not path.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {path}")
        if (path / "config.json").is_file():
            try:
                tied = bool(json.loads((path / "config.json").read_text()).get("tie_word_embeddings", False))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path / 'config.json'} is not valid JSON: {e}") from None
        from safetensors import SafetensorError, safe_open
        out = {}
        for f in checkpoint_files(path):
            try:
                sf = stack.enter_context(safe_open(f, framework="pt", device="cpu"))
            except SafetensorError as e:
                raise ValueError(f"{f}: not a safetensors file ({e})") from None
            for k in sf.keys():
                if k in out:
                    raise ValueError(f"{path}: tensor {k} appears in two shards")
                sl = sf.get_slice(k)
                out[k] = (tuple(sl.get_shape()), lambda a, b, sl=sl: sl[a:b])
    # not weights: RoPE buffers some old checkpoints saved, and the copy of a tied head some checkpoints store
    for k in [k for k in out if k.endswith(".rotary_emb.inv_freq") or (tied and k == "lm_head.weight")]:
        del out[k]
    return out


def _metrics(s):
    sd2, sad, sb2, sab, numel = s
    return {"numel": numel, "l2": math.sqrt(sd2), "l2_rel": math.sqrt(sd2 / sb2) if sb2 > 0 else None,
            "l1": sad, "l1_rel": sad / sab if sab > 0 else None}


def weight_distance(model, base, progress=True):
    """Distance of `model` from `base` (each an HF directory, a Transformer or a state_dict): a dict with
    tied_head, overall and groups ({name: {numel, l2, l2_rel, l1, l1_rel}}), and the same for every tensor."""
    with contextlib.ExitStack() as stack:
        m = _tensors(model, stack, "model")
        b = _tensors(base, stack, "base")
        only_m, only_b = sorted(set(m) - set(b)), sorted(set(b) - set(m))
        if only_m or only_b:
            side, keys = ("model", only_m) if only_m else ("base", only_b)
            raise ValueError(f"the checkpoints hold different tensors: {', '.join(keys[:3])}"
                             f"{' ...' if len(keys) > 3 else ''} only in the {side}")
        for k in m:
            if m[k][0] != b[k][0]:
                raise ValueError(f"tensor {k} has shape {list(m[k][0])} in the model but {list(b[k][0])} in the base")

        # per tensor: Σ Δ², Σ |Δ|, Σ base², Σ |base| (float64), numel
        sums = {}
        total = sum(math.prod(shape) for shape, _ in m.values())
        bar = tqdm(total=total, unit="param", unit_scale=True, disable=None if progress else True, file=sys.stderr)
        for k, (shape, read_m) in m.items():
            rows = shape[0] if shape else 1
            step = max(1, CHUNK // max(1, math.prod(shape[1:])))
            s = [0.0, 0.0, 0.0, 0.0, math.prod(shape)]
            for a in range(0, rows, step):
                y = b[k][1](a, a + step).to(torch.float64)                 # base rows, exactly upcast
                d = read_m(a, a + step).to(torch.float64).sub_(y)          # Δ rows
                s[0] += d.square().sum().item()
                s[1] += d.abs_().sum().item()
                s[2] += y.square().sum().item()
                s[3] += y.abs_().sum().item()
                bar.update(d.numel())
            sums[k] = s
        bar.close()

    groups = {}
    for k, s in sums.items():
        g = groups.setdefault(group_of(k), [0.0, 0.0, 0.0, 0.0, 0])
        for i in range(5):
            g[i] += s[i]
    overall = [sum(s[i] for s in sums.values()) for i in range(5)]
    return {"tied_head": "lm_head.weight" not in sums,
            "overall": _metrics(overall),
            "groups": {g: _metrics(groups[g]) for g in GROUPS if g in groups},
            "tensors": {k: _metrics(s) for k, s in sums.items()}}


def table(res):
    """A readable table of the groups and the total."""
    def fmt(x):
        return "-" if x is None else f"{x:.6g}"
    lines = [f"{'group':<11} {'params':>13} {'L2':>12} {'rel L2':>12} {'L1':>12} {'rel L1':>12}"]
    rows = [(g, res["groups"].get(g)) for g in GROUPS if g in res["groups"] or (g == "head" and res["tied_head"])]
    for name, r in rows + [("overall", res["overall"])]:
        if r is None:
            lines.append(f"{name:<11} {'':>13} tied to embed_tokens: counted under embeddings")
        else:
            lines.append(f"{name:<11} {r['numel']:>13,} {fmt(r['l2']):>12} {fmt(r['l2_rel']):>12} "
                         f"{fmt(r['l1']):>12} {fmt(r['l1_rel']):>12}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="L2/L1 distance between fine-tuned and pre-trained weights, per group.")
    p.add_argument("--model", required=True, help="the fine-tuned HF LLaMA directory")
    p.add_argument("--base", required=True, help="the pre-trained HF LLaMA directory it started from")
    p.add_argument("--output", help="results JSON to write")
    args = p.parse_args(argv)
    if args.output:
        check_writable(args.output)
    res = {"model": str(args.model), "base": str(args.base), **weight_distance(args.model, args.base)}
    if args.output:
        write_json(args.output, res, indent=1)
    print(table(res))
    return 0


if __name__ == "__main__":
    cli(main, "distance.py")
