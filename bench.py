"""
The yardstick: speed, memory and MFU of nanoPLW against HF transformers, in one process, on the identical model
(random weights, copied into transformers.LlamaForCausalLM) and the identical inputs.

    python bench.py --model tiny                                    # CPU float32: train, generate, mc
    python bench.py --model tiny --mode train --steps 20 --json     # + a row in bench/results.jsonl
    python bench.py --model llama2-7b --mode train --device cuda --dtype bfloat16 --compile \
        --batch_size 4 --grad_accum 32 --optimizer adamw_bf16 --json  # global batch 128; 7B on one 80 GB GPU

--model: a named shape (SHAPES below) or an HF config.json (or a directory holding one); weights are always random.

Modes (each prints ours, HF and the ratio ours/HF of the throughput; --json appends one row per mode):
  train     one optimizer step over a global batch of batch_size x grad_accum sequences: forward, per-token
            cross-entropy weighted PLW on prompt targets, 1 on completion targets, 0 on padding, summed and
            divided by the batch's total weight, backward, AdamW (foreach on CPU, fused on CUDA; or, with
            --optimizer adamw_bf16, train.py's bf16 AdamW with stochastic rounding; same settings on both sides). Ours: model(idx, targets), the chunked CE of model.py. HF: model(idx).logits, then
            F.cross_entropy(reduction="none") on the fp32 logits and the same weighting: the loop a user writes.
            Sequence lengths follow Stanford Alpaca with its prompt template under the LLaMA tokenizer (ALPACA_*
            below; mean 127 tokens, 99th percentile 362), cut at --seq_len; as in train.py, a global batch is
            sorted by length into its micro-batches, each right-padded to its longest row (rounded up to a
            multiple of 8). tokens/s counts non-padding tokens; MFU counts
            model.flops_per_token(len) * len per sequence (useful FLOPs only) against the GPU's dense bf16 peak.
  generate  greedy decoding of batch_size prompts of 20-60 random tokens, --new_tokens each, never stopping
            early. Ours: model.generate(lists of ids). HF: generate(do_sample=False) on the left-padded batch with
            its attention mask, eos_token_id=None: the way to batch prompts of different lengths there.
            new tokens/s; "same_tokens" is the fraction of rows whose tokens agree exactly.
  prep      Alpaca data preparation with an empty cache (every run tokenizes) and prompt inversion, against
            Stanford Alpaca's preprocessing (HF's slow LlamaTokenizer, string by string) on the same records.
            records/s; "same_counts": both give the same token and prompt-token counts after truncation.
  mc        zero-shot multiple-choice scoring, eval/mc.py's evaluate(), against lm-evaluation-harness's HFLM
            (loglikelihood() on the same (context, continuation) requests, same batch size) with the HF copy of
            the model and HF's slow LLaMA tokenizer. documents/s; "max_abs_ll_diff" compares the two.

Timing: --warmup untimed repeats, then --steps timed ones; a rate is the median of the per-repeat rates. On CPU
the sides alternate (ours, HF, ours, HF, ...) so that background load hits both alike, and each row records
"busy_elsewhere", the CPUs other processes used just before (a warning is printed when they compete with our
threads: on a shared machine --threads 1 gives steadier figures). On CUDA each side runs alone (two 7B models and
their optimizer states do not fit one GPU): ours is built, measured and freed, then HF is built from a CPU copy of
the same initial weights. Peak memory: CUDA, torch.cuda.max_memory_allocated from the side's construction on; CPU,
the side's parameter bytes + the largest growth of resident memory over its warm-up repeats (peak RSS reset
through /proc/self/clear_refs after malloc_trim; ru_maxrss elsewhere, a coarser figure).
"""
import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import args_from_hf_config, hf_config, hf_key
from model import ModelArgs, Transformer
from util import atomic_write

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("NANOPLW_SHARED", ROOT.parent / "shared"))  # as tests/conftest.py finds it

# named shapes, as HF config.json fields; max_position_embeddings only sizes the RoPE tables
SHAPES = {
    # the CPU yardstick: 4 layers, 256 wide, LLaMA's 32k vocabulary; 4 heads of 64 (no GQA), and LLaMA's
    # SwiGLU width rule 8/3 * dim rounded up to a multiple of 256 = 768
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    # TinyLlama-1.1B's config.json: LLaMA-2 architecture and tokenizer, 22 layers, GQA 32 query / 4 kv heads
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    # LLaMA-2-7B's config.json (meta-llama/Llama-2-7b-hf)
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
MODES = ("train", "generate", "mc", "prep")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# dense bf16 tensor-core peaks (FLOP/s) of the GPUs we know; MFU is left out elsewhere (and for fp32)
# (first match in the device name wins: the PCIe H100 has fewer SMs and a lower clock than the SXM one)
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}

# Stanford Alpaca's 52,002 records with the Stanford prompt template, LLaMA tokenizer: percentiles 0, 5, ..., 95,
# 99, 100 of the prompt length ([BOS] + template + instruction + input) and of the completion length (output +
# [EOS]). A length is drawn by inverse-CDF sampling between these points: prompt and completion independently.
ALPACA_Q = [0.0] + [q / 100 for q in range(5, 100, 5)] + [0.99, 1.0]
ALPACA_PROMPT = [39, 43, 45, 45, 46, 47, 48, 49, 50, 51, 53, 55, 63, 68, 70, 73, 76, 79, 84, 95, 134, 656]
ALPACA_COMPLETION = [1, 5, 8, 11, 13, 16, 20, 24, 30, 38, 48, 58, 68, 77, 87, 97, 108, 122, 141, 177, 298, 1228]


class BenchError(Exception):
    """A user-facing problem (bad argument, missing data): one line, exit 1."""


# -----------------------------------------------------------------------------
# the machine

def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def busy_elsewhere(seconds=1.0):
    """CPUs kept busy by other processes over the next `seconds` (Linux /proc/stat less our own CPU time),
    None where that cannot be read. A busy machine inflates times and squeezes the ratios."""
    def busy():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait, seconds
    try:
        b0, own0, t0 = busy(), sum(os.times()[:2]), time.perf_counter()
        time.sleep(seconds)
        b1, own1, t1 = busy(), sum(os.times()[:2]), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None
    return round(max(0.0, (b1 - b0) - (own1 - own0)) / (t1 - t0), 2)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def mem_reset(device):
    """Start a peak-memory window; returns the baseline that mem_peak's figure is relative to."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    # hand freed heap pages back, so that memory reused from an earlier phase shows up as growth again
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return _rss_bytes("VmRSS")
    except OSError:
        return _maxrss()


def mem_peak(device, base):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        return _rss_bytes("VmHWM") - base
    except OSError:
        return _maxrss() - base


def _maxrss():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


# -----------------------------------------------------------------------------
# the two models

def load_shape(name):
    if name in SHAPES:
        cfg = dict(SHAPES[name], bos_token_id=1, eos_token_id=2, rope_theta=10000.0)
        return name, args_from_hf_config(cfg, source=f"shape {name}")
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise BenchError(f"unknown model {name!r}: expected one of {', '.join(SHAPES)} or an HF config.json "
                         f"(or a directory holding one)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path} is not valid JSON: {e}") from None
    return str(name), args_from_hf_config(cfg, source=str(path))


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def n_params(args):
    with torch.device("meta"):
        return Transformer(args).num_params()


def build_ours(a, args, device, dtype, init):
    """Our model with HF's random initialisation, built directly on the device in the bench dtype. Unless --no_hf,
    a CPU copy of its initial weights goes to init["sd"], for the HF side to start from the same point."""
    torch.manual_seed(a.seed)
    with torch.device(device), default_dtype(dtype):
        model = Transformer(args)
    model.to(dtype)  # the RoPE tables too, as from_pretrained(dtype=...) casts them
    if not a.no_hf:
        init["sd"] = {hf_key(k): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return model


def build_hf(args, state_dict, device, dtype):
    """transformers.LlamaForCausalLM with our weights (state_dict: HF keys, on the CPU)."""
    import transformers
    transformers.logging.set_verbosity_error()
    cfg = {k: v for k, v in hf_config(args, dtype).items() if k not in ("architectures", "torch_dtype")}
    with torch.device(device), default_dtype(dtype):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="sdpa"))
    hf.to(dtype)
    missing, unexpected = hf.load_state_dict(state_dict, strict=False)
    if missing or unexpected:  # internal bug: our names and HF's must correspond one to one
        raise RuntimeError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
    return hf


def make_optimizer(model, device, kind="adamw"):
    # the same optimizer for both sides: torch's AdamW (fused on CUDA, foreach elsewhere), or train.py's
    # AdamWBF16 (bf16 weights and state, stochastic rounding: the plan for 7B on one 80 GB GPU)
    if kind == "adamw_bf16":
        from optim import AdamWBF16
        return AdamWBF16(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
    fast = dict(fused=True) if device.type == "cuda" else dict(foreach=True)
    return torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0, **fast)


# -----------------------------------------------------------------------------
# measuring: sides that build themselves, run work item i, and are timed alike

def measure(sides, n_warmup, n_steps, device, desc):
    """sides: {name: build}, build() -> (run, parameter bytes); run(i) does work item i and returns what the
    first warm-up produced (for the parity checks). Returns {name: {"times", "peak_mem", "first"}}."""
    out = {}
    total = (n_warmup + n_steps) * len(sides)
    bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=False)

    def timed(run, i):
        sync(device)
        t0 = time.perf_counter()
        run(i)
        sync(device)
        bar.update(1)
        return time.perf_counter() - t0

    def warm(name, run, pbytes, base):
        first = run(0)
        bar.update(1)
        for i in range(1, n_warmup):
            timed(run, i)
        peak = mem_peak(device, base)
        out[name] = {"times": [], "peak_mem": peak if device.type == "cuda" else pbytes + peak, "first": first}

    if device.type == "cpu":
        built = {}
        for name, build in sides.items():  # every side built before any runs: HF copies the initial weights
            built[name] = build()
        for name, (run, pbytes) in built.items():
            warm(name, run, pbytes, mem_reset(device))
        for i in range(n_steps):
            for name, (run, _) in built.items():
                out[name]["times"].append(timed(run, n_warmup + i))
        del built
    else:
        for name, build in sides.items():
            base = mem_reset(device)
            run, pbytes = build()
            warm(name, run, pbytes, base)
            out[name]["times"] = [timed(run, n_warmup + i) for i in range(n_steps)]
            del run
            torch.compiler.reset()  # compiled code can hold the model: free it before the next side is built
            mem_reset(device)
    bar.close()
    return out


def summary(res, units, flops=None, peak_flops=None):
    """units (and flops): per timed run, a list, or one number for runs that all do the same work. Rates are
    medians of the per-run rates, so that a run slowed by background load counts once, not by its length."""
    times = res["times"]
    units = units if isinstance(units, list) else [units] * len(times)
    row = {"median_s": round(statistics.median(times), 6),
           "per_s": round(statistics.median(u / t for u, t in zip(units, times)), 3),
           "peak_mem_gb": round(res["peak_mem"] / 1e9, 3), "times_s": [round(t, 6) for t in times]}
    if flops and peak_flops:
        row["mfu"] = round(statistics.median(f / t for f, t in zip(flops, times)) / peak_flops, 4)
    return row


# -----------------------------------------------------------------------------
# train

def alpaca_lengths(n, seq_len, gen):
    """n (prompt, completion) token counts drawn from the Alpaca percentiles, the total cut at seq_len + 1."""
    def draw(points):
        u = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
        out = []
        for x in u:  # linear interpolation of the inverse CDF between the tabulated percentiles
            j = min(max(i for i, q in enumerate(ALPACA_Q) if q <= x), len(ALPACA_Q) - 2)
            f = (x - ALPACA_Q[j]) / (ALPACA_Q[j + 1] - ALPACA_Q[j])
            out.append(max(1, round(points[j] + f * (points[j + 1] - points[j]))))
        return out
    pairs = []
    for p, c in zip(draw(ALPACA_PROMPT), draw(ALPACA_COMPLETION)):
        p = min(p, seq_len)                        # a sequence of L tokens gives L - 1 (input, target) pairs,
        pairs.append((p, min(c, seq_len + 1 - p)))  # so seq_len + 1 tokens fill a row of seq_len
    return pairs


def train_batches(n, batch_size, grad_accum, seq_len, vocab, plw, gen):
    """n global batches, each grad_accum micro-batches (idx, targets, weights) plus the global weight sum. As in
    train.py, the global batch's sequences are sorted by length into its micro-batches, which keeps padding low."""
    out = []
    for _ in range(n):
        micro, wsum, real, flops_seqs = [], 0.0, 0, []
        everything = sorted(alpaca_lengths(batch_size * grad_accum, seq_len, gen), key=lambda pc: -(pc[0] + pc[1]))
        for m in range(grad_accum):
            pairs = everything[m * batch_size:(m + 1) * batch_size]
            T = max(p + c for p, c in pairs) - 1
            T = min(seq_len, -(-T // 8) * 8)
            idx = torch.zeros(batch_size, T, dtype=torch.long)
            targets = torch.full((batch_size, T), -1, dtype=torch.long)
            w = torch.zeros(batch_size, T)
            for b, (p, c) in enumerate(pairs):
                L = p + c  # [BOS] prompt ... completion [EOS]: L tokens, L - 1 predictions
                seq = torch.randint(3, vocab, (L,), generator=gen)
                seq[0] = 1
                idx[b, :L - 1], targets[b, :L - 1] = seq[:-1], seq[1:]
                w[b, :p - 1] = plw        # targets 1 .. p-1 are prompt tokens
                w[b, p - 1:L - 1] = 1.0   # targets p .. L-1 are the completion (its EOS included)
                flops_seqs.append(L - 1)
                real += L - 1
            micro.append((idx, targets, w))
            wsum += float(w.sum())
        out.append({"micro": micro, "wsum": wsum, "tokens": real,
                    "padded": sum(m[0].numel() for m in micro), "lens": flops_seqs})
    return out


def bench_train(a, args, device, dtype, peak):
    with torch.device("meta"):
        meta = Transformer(args)  # for flops_per_token only: no memory
    gen = torch.Generator().manual_seed(a.seed)
    batches = train_batches(a.warmup + a.steps, a.batch_size, a.grad_accum, a.seq_len, args.vocab_size, a.plw, gen)
    batches = [dict(b, micro=[tuple(t.to(device) for t in m) for m in b["micro"]]) for b in batches]
    init = {}

    def train_step(per_token_ce, opt):
        """The timed step, the same for both sides but for per_token_ce: (idx, targets) -> (B, T) CE."""
        def run(i):
            b = batches[i]
            total = 0.0
            for idx, targets, w in b["micro"]:
                loss = (per_token_ce(idx, targets) * w).sum() / b["wsum"]
                loss.backward()
                total += loss.detach()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(total) if i == 0 else None
        return run

    def ours():
        model = build_ours(a, args, device, dtype, init).train()
        model.activation_checkpointing = a.activation_checkpointing
        fwd = torch.compile(model) if a.compile else model
        return train_step(fwd, make_optimizer(model, device, a.optimizer)), param_bytes(model)  # (B, T) fp32 CE

    def hf():
        model = build_hf(args, init.pop("sd"), device, dtype).train()
        if a.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        fwd = torch.compile(model) if a.compile else model

        def per_token_ce(idx, targets):  # the plain loop: fp32 logits for the whole micro-batch
            logits = fwd(input_ids=idx, use_cache=False).logits                          # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                                   reduction="none").view_as(targets)                    # (B, T)
        return train_step(per_token_ce, make_optimizer(model, device, a.optimizer)), param_bytes(model)

    sides = {"ours": ours} if a.no_hf else {"ours": ours, "hf": hf}
    res = measure(sides, a.warmup, a.steps, device, "train")
    timed = batches[a.warmup:]
    tokens = [b["tokens"] for b in timed]
    padded = [b["padded"] for b in timed]
    # useful FLOPs: each sequence at its own length, padding not counted
    flops = [sum(meta.flops_per_token(L) * L for L in b["lens"]) for b in timed]
    row = {"units": "tokens/s (non-padding)", "tokens_per_step": statistics.mean(tokens),
           "padded_tokens_per_step": statistics.mean(padded), "flops_per_step": statistics.mean(flops)}
    for side, r in res.items():
        row[side] = summary(r, tokens, flops, peak)
        row[side]["padded_per_s"] = summary(r, padded)["per_s"]
        row[side]["first_loss"] = r["first"]
    if "hf" in res:
        row["loss_diff"] = abs(res["ours"]["first"] - res["hf"]["first"])
    return row


# -----------------------------------------------------------------------------
# generate

def bench_generate(a, args, device, dtype, peak):
    gen = torch.Generator().manual_seed(a.seed)
    lens = torch.linspace(20, 60, a.batch_size).round().long().tolist() if a.batch_size > 1 else [40]
    prompts = [[1] + torch.randint(3, args.vocab_size, (n - 1,), generator=gen).tolist() for n in lens]
    n_new = a.new_tokens
    if max(lens) + n_new > args.max_seq_len:
        raise BenchError(f"--new_tokens {n_new} + prompts of up to {max(lens)} tokens exceed the model's "
                         f"max_seq_len {args.max_seq_len}")
    init = {}

    def ours():
        model = build_ours(a, args, device, dtype, init).eval()

        def run(i):
            out = model.generate(prompts, n_new)
            return [o[len(p):] for o, p in zip(out, prompts)] if i == 0 else None
        return run, param_bytes(model)

    def hf():
        model = build_hf(args, init.pop("sd"), device, dtype).eval()
        T = max(lens)
        ids = torch.zeros(len(prompts), T, dtype=torch.long)
        mask = torch.zeros(len(prompts), T, dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row's last prompt token is at the end
            ids[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
        ids, mask = ids.to(device), mask.to(device)

        def run(i):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            return out[:, T:].tolist() if i == 0 else None
        return run, param_bytes(model)

    sides = {"ours": ours} if a.no_hf else {"ours": ours, "hf": hf}
    res = measure(sides, a.warmup, a.steps, device, "generate")
    row = {"units": "new tokens/s", "prompts": len(prompts), "prompt_lens": lens, "new_tokens": n_new}
    for side, r in res.items():
        row[side] = summary(r, len(prompts) * n_new)
    if "hf" in res:
        row["same_tokens"] = sum(x == y for x, y in zip(res["ours"]["first"], res["hf"]["first"])) / len(prompts)
    return row


# -----------------------------------------------------------------------------
# mc

def bench_mc(a, args, device, dtype, peak):
    try:
        from eval import mc
    except ImportError as e:
        raise BenchError(f"--mode mc needs eval/mc.py, which is not available ({e})") from None
    from tokenizer import Tokenizer
    tasks = [t.strip() for t in a.mc_tasks.split(",") if t.strip()]
    data_dir = Path(a.mc_data_dir or SHARED / "data" / "eval" / "hf")
    tok_path = Path(a.tokenizer or SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model")
    try:
        mc.check_tasks(tasks)
    except ValueError as e:
        raise BenchError(str(e)) from None
    for t in tasks:
        if not (data_dir / mc.TASKS[t][0]).is_file():
            raise BenchError(f"no such file: {data_dir / mc.TASKS[t][0]} (set --mc_data_dir to the HF-datasets "
                             f"layout of ../shared/data/eval/hf)")
    if not tok_path.is_file():
        raise BenchError(f"no such tokenizer: {tok_path} (set --tokenizer)")
    tokenizer = Tokenizer(tok_path)
    if tokenizer.vocab_size > args.vocab_size:
        raise BenchError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {args.vocab_size}")
    docs = {t: mc.load_docs(t, data_dir, a.mc_limit) for t in tasks}
    n_docs = sum(len(d) for d in docs.values())
    requests = [(t, d["doc_id"], pair) for t in tasks for d in docs[t]
                for pair in zip(d["contexts"], d["continuations"])]
    init = {}

    def ours():
        model = build_ours(a, args, device, dtype, init).eval()

        def run(i):
            out = mc.evaluate(model, tokenizer, tasks, data_dir, limit=a.mc_limit, batch_size=a.mc_batch_size,
                              progress=False)
            return [ll for t in tasks for s in out["samples"][t] for ll in s["lls"]] if i == 0 else None
        return run, param_bytes(model)

    def hf():
        import logging
        import transformers
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on being handed a model object
        model = build_hf(args, init.pop("sd"), device, dtype).eval()
        hf_tok = transformers.LlamaTokenizer(vocab_file=str(tok_path), legacy=True)
        lm = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=a.mc_batch_size, max_length=args.max_seq_len,
                  softmax_dtype=torch.float32)
        insts = [Instance("loglikelihood", {}, pair, i, metadata=(t, doc_id, 1))
                 for i, (t, doc_id, pair) in enumerate(requests)]

        def run(i):
            lls = [ll for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]
            return lls if i == 0 else None
        return run, param_bytes(model)

    sides = {"ours": ours} if a.no_hf else {"ours": ours, "hf": hf}
    res = measure(sides, a.warmup, a.steps, device, "mc")
    row = {"units": "documents/s", "tasks": tasks, "limit": a.mc_limit, "documents": n_docs,
           "requests": len(requests), "mc_batch_size": a.mc_batch_size}
    for side, r in res.items():
        row[side] = summary(r, n_docs)
    if "hf" in res:
        row["max_abs_ll_diff"] = max(abs(x - y) for x, y in zip(res["ours"]["first"], res["hf"]["first"]))
    return row


# -----------------------------------------------------------------------------
# prep

def bench_prep(a, args, device, dtype, peak):
    """Alpaca data preparation from scratch (a fresh cache every run, so every run tokenizes) and prompt
    inversion. The peer is Stanford Alpaca's own preprocessing, which the paper ran: HF's slow LlamaTokenizer
    called string by string on the prompts and on prompt + output + EOS, truncated at 512."""
    import shutil
    import tempfile
    from data.invert import invert_records
    from data.prepare import format_prompt, load_records, prepare_dataset
    src = Path(a.prep_data or SHARED / "data" / "alpaca" / "alpaca_data.json.gz")
    tok_path = Path(a.tokenizer or SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model")
    if not tok_path.is_file():
        raise BenchError(f"no such tokenizer: {tok_path} (set --tokenizer)")
    records = load_records(src)[:a.prep_limit or None]
    if a.prep_limit:  # a file of the first N records, so that both sides read the same data
        tmp_src = Path(tempfile.mkdtemp()) / "records.json"
        tmp_src.write_text(json.dumps(records))
        src = tmp_src
    work = Path(tempfile.mkdtemp())

    def ours():
        def run(i):
            cache = work / f"cache{i}"
            _, _, rep = prepare_dataset(str(src), str(tok_path), 512, cache_dir=cache, verbose=False)
            shutil.rmtree(cache)
            return [rep["tokens"], rep["prompt_tokens"]] if i == 0 else None
        return run, 0

    def hf():
        import transformers
        tok = transformers.LlamaTokenizer(vocab_file=str(tok_path), legacy=True)

        def run(i):
            sources = [format_prompt(r["instruction"], r["input"]) for r in records]
            full = [tok(s + r["output"] + tok.eos_token, max_length=512, truncation=True).input_ids
                    for s, r in zip(sources, records)]
            prompt = [tok(s, max_length=512, truncation=True).input_ids for s in sources]
            return [sum(map(len, full)), sum(min(len(p), len(f)) for p, f in zip(prompt, full))] if i == 0 else None
        return run, 0

    def inversion():
        def run(i):
            inverted, _ = invert_records(load_records(src))
            (work / "inverted.json").write_text(json.dumps(inverted, indent=4))
        return run, 0

    sides = {"ours": ours} if a.no_hf else {"ours": ours, "hf": hf}
    res = measure(sides, a.warmup, a.steps, device, "prep")
    inv = measure({"ours": inversion}, a.warmup, a.steps, device, "invert")["ours"]
    shutil.rmtree(work)
    row = {"units": "records/s", "data": str(src), "records": len(records),
           "invert": {"median_s": round(statistics.median(inv["times"]), 6), "records": len(records)}}
    for side, r in res.items():
        row[side] = summary(r, len(records))
    if "hf" in res:  # tokens and prompt tokens after truncation: the two pipelines must agree exactly
        row["same_counts"] = float(res["ours"]["first"] == res["hf"]["first"])
    return row


BENCHES = {"train": bench_train, "generate": bench_generate, "mc": bench_mc, "prep": bench_prep}


# -----------------------------------------------------------------------------
# report

def print_row(row):
    head = (f"{row['mode']}  {row['model']}  {row['dtype']}  {row['device']}"
            + (f"  batch {row['batch_size']} x {row['grad_accum']}, seq_len {row['seq_len']}"
               if row["mode"] == "train" else ""))
    print(head)
    print(f"  {'':6} {'median s':>10} {row['units']:>24} {'peak GB':>9} {'MFU':>7}")
    for side in ("ours", "hf"):
        r = row.get(side)
        if r:
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            print(f"  {side:6} {r['median_s']:>10.4f} {r['per_s']:>24,.1f} {r['peak_mem_gb']:>9.3f} {mfu:>7}")
    if row.get("ratio"):
        print(f"  ours / HF: {row['ratio']:.2f}x")
    if "invert" in row:
        print(f"  invert {row['invert']['records']:,} records: {row['invert']['median_s']:.2f} s")
    for k in ("loss_diff", "same_tokens", "max_abs_ll_diff", "same_counts"):
        if k in row:
            print(f"  {k}: {row[k]:.3g}")


def append_rows(path, rows):
    """Append JSON lines atomically: the old file plus the new rows go to a temp file that replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    new = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(old + new))


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 1, as every tool here does
        raise BenchError(message)


def parse_args(argv):
    p = Parser(description="Train step, batched generation and MC scoring throughput: nanoPLW vs HF transformers.")
    p.add_argument("--model", default="tiny", help=f"{', '.join(SHAPES)} or an HF config.json (random weights)")
    p.add_argument("--mode", default="train,generate,mc", help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch_size", type=int, default=8, help="train micro-batch; number of prompts to generate")
    p.add_argument("--grad_accum", type=int, default=1, help="train micro-batches per optimizer step")
    p.add_argument("--seq_len", type=int, default=512, help="train: longest sequence (Stanford Alpaca's 512)")
    p.add_argument("--plw", type=float, default=0.1, help="train: prompt loss weight")
    p.add_argument("--new_tokens", type=int, default=64, help="generate: new tokens per prompt")
    p.add_argument("--mc_tasks", default="arc_challenge,hellaswag,piqa,winogrande",
                   help="mc: eval/mc.py task names")
    p.add_argument("--mc_limit", type=int, default=50, help="mc: first N documents of each task")
    p.add_argument("--mc_batch_size", type=int, default=32, help="mc: documents per forward (both sides)")
    p.add_argument("--mc_data_dir", help="mc: HF-datasets layout directory (default ../shared/data/eval/hf)")
    p.add_argument("--tokenizer", help="mc: sentencepiece model (default ../shared LLaMA tokenizer)")
    p.add_argument("--prep_data", help="prep: Alpaca-format file (default ../shared Stanford Alpaca, 52,002 records)")
    p.add_argument("--prep_limit", type=int, default=0, help="prep: first N records only (0: all)")
    p.add_argument("--steps", type=int, default=10, help="timed repeats per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats per side first")
    p.add_argument("--threads", type=int, help="CPU threads (default torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="train: torch.compile both models")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw_bf16"],
                   help="train: torch AdamW, or train.py's bf16 AdamW with stochastic rounding (with --dtype bfloat16)")
    p.add_argument("--activation_checkpointing", action="store_true", help="train: recompute blocks in backward")
    p.add_argument("--no_hf", action="store_true", help="measure ours only")
    p.add_argument("--json", action="store_true", help="append one row per mode to --results")
    p.add_argument("--results", default=str(ROOT / "bench" / "results.jsonl"))
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad or not a.modes:
        raise BenchError(f"unknown mode {(bad or [a.mode])[0]!r}: expected a comma-separated list of "
                         f"{', '.join(MODES)}")
    for k in ("batch_size", "grad_accum", "seq_len", "new_tokens", "steps", "mc_limit", "mc_batch_size"):
        if getattr(a, k) < 1:
            raise BenchError(f"--{k} must be a positive integer, got {getattr(a, k)}")
    if a.warmup < 1:
        raise BenchError(f"--warmup must be at least 1, got {a.warmup}")
    if a.seq_len < 8:
        raise BenchError(f"--seq_len must be at least 8, got {a.seq_len}")
    if a.threads is not None and a.threads < 1:
        raise BenchError(f"--threads must be a positive integer, got {a.threads}")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        a = parse_args(argv)
        try:
            device = torch.device(a.device)
        except RuntimeError:
            raise BenchError(f"unknown device {a.device!r}: expected cpu or cuda[:N]") from None
        if device.type not in ("cpu", "cuda"):
            raise BenchError(f"unknown device {a.device!r}: expected cpu or cuda[:N]")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is available")
        if not a.no_hf:
            try:
                import transformers  # noqa: F401  (the peer; only bench.py and the tests import it)
            except ImportError:
                raise BenchError("the HF peer needs transformers (pip install transformers) or pass --no_hf") from None
        model_name, args = load_shape(a.model)
        if "train" in a.modes and a.seq_len > args.max_seq_len:
            raise BenchError(f"--seq_len {a.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
        if a.threads:
            torch.set_num_threads(a.threads)
        dtype = DTYPES[a.dtype]
        name = device_name(device)
        peak = None
        if device.type == "cuda" and dtype == torch.bfloat16:
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        rows = []
        for mode in a.modes:
            row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name,
                   "threads": torch.get_num_threads() if device.type == "cpu" else None,
                   "torch": torch.__version__, "transformers": None,
                   "command": shlex.join(["python", "bench.py", *argv]),
                   "mode": mode, "model": model_name, "params": n_params(args), "dtype": a.dtype,
                   "batch_size": a.batch_size, "grad_accum": a.grad_accum, "seq_len": a.seq_len,
                   "steps": a.steps, "warmup": a.warmup, "compile": a.compile, "peak_flops": peak,
                   "optimizer": a.optimizer, "activation_checkpointing": a.activation_checkpointing}
            if not a.no_hf:
                import transformers
                row["transformers"] = transformers.__version__
            others = busy_elsewhere() if device.type == "cpu" else None
            if others is not None and others + torch.get_num_threads() > (os.cpu_count() or 1) + 0.25:
                print(f"bench.py: warning: other processes keep {others:.1f} of {os.cpu_count()} CPUs busy and compete "
                      f"with {torch.get_num_threads()} threads: times are inflated and ratios squeezed (fewer "
                      f"--threads, or a quiet machine)", file=sys.stderr)
            try:
                row.update(BENCHES[mode](a, args, device, dtype, peak))
            except torch.cuda.OutOfMemoryError:
                raise BenchError(f"{mode}: out of memory at --batch_size {a.batch_size}: try a smaller "
                                 f"--batch_size (with a larger --grad_accum for the same global batch)") from None
            row["busy_elsewhere"] = others  # CPUs other processes used just before: was the machine quiet?
            row.setdefault("hf", None)
            row["ratio"] = round(row["ours"]["per_s"] / row["hf"]["per_s"], 3) if row["hf"] else None
            row["peak_mem_gb"] = row["ours"]["peak_mem_gb"]
            row["mfu"] = row["ours"].get("mfu")
            print_row(row)
            rows.append(row)
            if a.json:  # each mode's row as soon as it is measured: a later failure keeps it
                append_rows(a.results, [row])
        if a.json:
            print(f"appended {len(rows)} row(s) to {a.results}", file=sys.stderr)
    except (BenchError, OSError, ValueError) as e:
        print(f"bench.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
