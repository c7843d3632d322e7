"""
Throughput, memory and MFU of nanoPLW against its peer in one process, on the identical model (random weights,
copied into transformers.LlamaForCausalLM) and inputs: a train step against HF + the plain loss loop, greedy
generation against HF generate, multiple-choice scoring against lm-eval's HFLM. Prints ours, the peer and the
ratio; docs/benchmarks.md has what each side does, how the two are timed, what peak memory and MFU count.

    python bench.py --model=tiny                                      # CPU float32: train, generate, mc
    python bench.py --model=tiny --mode=train --steps=20 --json=True  # + a row in bench/results.jsonl
    python bench.py --model=llama2-7b --mode=train --device=cuda --dtype=bfloat16 --compile=True \\
        --batch_size=4 --grad_accum=32 --optimizer=adamw_bf16 --json=True  # global batch 128 on one 80 GB GPU
    python bench.py --help                                            # every option, its default and meaning
"""
import gc
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from importlib.util import find_spec
from json import dumps, loads
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import args_from_hf_config, hf_config, hf_key
from config import ConfigError, load_config
from data.batch import (collate, pack_rows, padded_tokens, split_by_tokens, split_micro_batches, step_examples,
                        target_counts)
from model import Transformer
from optim import AdamWBF16
from util import DataError, atomic_write, check_writable, cli

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("NANOPLW_SHARED", ROOT.parent / "shared"))  # as tests/conftest.py finds it

# -----------------------------------------------------------------------------
# default config
model = "tiny"                  # tiny | llama-1b | llama2-7b (SHAPES) or an HF config.json or its directory
mode = "train,generate,mc"      # comma-separated, from MODES: train, generate, mc; plan (memory and time of a step
                                # from formulas), padding (of each split, on a data set's lengths)
device = "cpu"                  # cpu | cuda | cuda:N
dtype = "float32"               # float32 | bfloat16: the weights' dtype, on both sides
batch_size = 8                  # train: micro-batch; generate: number of prompts
grad_accum = 1                  # train: micro-batches per optimizer step
seq_len = 512                   # train: longest sequence (Stanford Alpaca's 512), a multiple of 8
plw = 0.1                       # train: prompt loss weight
new_tokens = 64                 # generate: new tokens per prompt
mc_tasks = "arc_challenge,hellaswag,piqa,winogrande"  # mc: eval/mc.py task names
mc_limit = 50                   # mc: the first N documents of each task
mc_batch_size = 32              # mc: documents per forward (both sides)
mc_data_dir = str(SHARED / "data" / "eval" / "hf")  # mc: the tasks' files, in the HF-datasets layout
tokenizer = str(SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model")  # mc: a sentencepiece model
steps = 10                      # timed repeats per side
warmup = 2                      # untimed repeats per side before them (at least 1)
threads = 0                     # CPU threads; 0 = torch's default
seed = 0                        # fixes the weights, the batches and the prompts
compile = False                 # train: compile as train.py does (ours: per block; HF: the whole model) + the fused
                                # bf16 AdamW update (both sides)
optimizer = "adamw"             # train: adamw (torch's) | adamw_bf16 (optim.py: bf16 state, stochastic rounding)
activation_checkpointing = False  # train: recompute each block's activations in backward (both sides)
checkpoint_every = 1            # train, plan: with activation_checkpointing, ours recomputes every k-th block only
tokens_per_micro_batch = 0      # train, plan: ours cuts the global batch into micro-steps of this many tokens, as
                                # train.py does (HF keeps batch_size rows); 0 = batch_size rows
pack = False                    # train, plan: ours packs the examples into rows of tokens_per_micro_batch (train.py's
                                # pack: attention within each example)
gpu = "H100"                    # plan: H100 | H200 | A100 (dense bf16 peak, memory bandwidth, memory)
world = 1                       # plan: GPUs; above 1, FSDP2 shards weights, gradients and optimizer state over them
dataset = str(SHARED / "data" / "alpaca" / "alpaca_data.json.gz")  # padding: Alpaca-format records, tokenized
                                # with `tokenizer` (their lengths alone are used)
budgets = "4096,8192,16384"     # padding: the token budgets (tokens_per_micro_batch) to measure
no_hf = False                   # measure ours only (no peer package needed)
json = False                    # append one row per mode to `results`
results = str(ROOT / "bench" / "results.jsonl")  # the JSON-lines file json=True appends to
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

# named shapes as HF config.json fields (max_position_embeddings only sizes the RoPE tables): the CPU yardstick (4
# layers, 256 wide, LLaMA's vocabulary and SwiGLU width rule), TinyLlama-1.1B (LLaMA-2 with GQA), LLaMA-2-7B
SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
# the README's 7B command on one GPU: a config file and its overrides (tests/test_bench.py holds the README to it,
# bench/gpu_check.sh measures it)
README_7B = ["configs/short_plw01.py", "--parallel=ddp", "--optimizer=adamw_bf16", "--activation_checkpointing=True",
             "--checkpoint_every=4", "--batch_size=4", "--gradient_accumulation_steps=32"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# dense bf16 tensor-core peaks (FLOP/s); the first match in the device name wins (the PCIe H100 is slower)
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
# Stanford Alpaca (52,002 records, its prompt template, LLaMA tokenizer): percentiles 0, 5, ..., 95, 99, 100 of the
# prompt length ([BOS] + template + instruction + input) and of the completion length (output + [EOS])
ALPACA_Q = [0.0] + [q / 100 for q in range(5, 100, 5)] + [0.99, 1.0]
ALPACA_PROMPT = [39, 43, 45, 45, 46, 47, 48, 49, 50, 51, 53, 55, 63, 68, 70, 73, 76, 79, 84, 95, 134, 656]
ALPACA_COMPLETION = [1, 5, 8, 11, 13, 16, 20, 24, 30, 38, 48, 58, 68, 77, 87, 97, 108, 122, 141, 177, 298, 1228]


# -----------------------------------------------------------------------------
# the two models: ours with HF's random initialisation, and transformers' LLaMA with a copy of its weights

def load_shape(name):
    if name in SHAPES:
        return name, args_from_hf_config(dict(SHAPES[name], bos_token_id=1, eos_token_id=2), source=f"shape {name}")
    path = Path(name) / "config.json" if Path(name).is_dir() else Path(name)
    if not path.is_file():
        raise DataError(f"unknown model {name!r}: expected one of {', '.join(SHAPES)} or an HF config.json "
                        f"(or a directory holding one)")
    try:
        return name, args_from_hf_config(loads(path.read_text()), source=str(path))
    except ValueError as e:  # JSONDecodeError included
        raise DataError(f"{path}: {e}") from None


def n_params(args):
    with torch.device("meta"):
        return Transformer(args).num_params()


def build(make, device, dtype):
    """make() built directly on the device in the bench dtype (the RoPE tables too, as from_pretrained casts them)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make().to(dtype)
    finally:
        torch.set_default_dtype(old)


def build_ours(a, args, device, dtype, init):
    """Our model with HF's random initialisation. Unless a.no_hf, a CPU copy of its initial weights goes to
    init["sd"] (HF keys), for the HF side to start from the same point."""
    torch.manual_seed(a.seed)
    model = build(lambda: Transformer(args), device, dtype)
    if not a.no_hf:
        init["sd"] = {hf_key(k): v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return model


def build_hf(args, state_dict, device, dtype):
    """transformers.LlamaForCausalLM with our weights (state_dict: HF keys, on the CPU)."""
    import transformers
    transformers.logging.set_verbosity_error()
    cfg = {k: v for k, v in hf_config(args, dtype).items() if k not in ("architectures", "torch_dtype")}
    hf = build(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="sdpa")),
               device, dtype)
    missing, unexpected = hf.load_state_dict(state_dict, strict=False)
    if missing or unexpected:  # internal bug: our names and HF's must correspond one to one
        raise RuntimeError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
    return hf


# -----------------------------------------------------------------------------
# measuring (docs/benchmarks.md)

def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def peak_memory(device, reset=False):
    """Bytes. CUDA: the most allocated since the last reset (reset=True starts anew and returns 0). CPU: the
    process's peak resident memory so far, which never goes down: a window is measured as growth over it."""
    gc.collect()
    if device.type == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if reset:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return torch.cuda.max_memory_allocated(device)


class HostSyncs:
    """Counts host syncs: the operations that make the host wait for the device on a GPU, on any device (a test on
    the CPU counts what would wait on CUDA). On CUDA, torch's own sync debug mode reports each synchronizing call
    as a warning, counted here; elsewhere a dispatch mode counts the ops that need a device value on the host
    (.item() / float() / bool(), nonzero, masked_select, boolean indexing, unique, ...) and .tolist() (a device-to-host
    copy). `paused` (a context) excludes work done on the host's own tensors, such as collating a batch.

        with HostSyncs(device) as syncs:
            train_step(...)
        syncs.count
    """
    OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "_unique", "_unique2",
           "unique_dim", "unique_consecutive", "repeat_interleave")

    def __init__(self, device):
        self.cuda, self.count, self.calls, self._pause = torch.device(device).type == "cuda", 0, [], 0

    def hit(self, what):
        if not self._pause:
            self.count += 1
            self.calls.append(what)

    def paused(self):
        from contextlib import contextmanager

        @contextmanager
        def pause():
            self._pause += 1
            try:
                yield
            finally:
                self._pause -= 1
        return pause()

    def __enter__(self):
        if self.cuda:
            import warnings
            self._warnings = warnings.catch_warnings(record=True)
            self._seen = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            return self
        from torch.utils._python_dispatch import TorchDispatchMode
        counter, ops = self, {getattr(torch.ops.aten, name) for name in self.OPS if hasattr(torch.ops.aten, name)}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                boolean_index = func is torch.ops.aten.index.Tensor and any(
                    t is not None and t.dtype == torch.bool for t in args[1])
                if func.overloadpacket in ops or boolean_index:
                    counter.hit(str(func))
                return func(*args, **(kwargs or {}))
        self._mode, self._tolist = Mode(), torch.Tensor.tolist
        tolist = self._tolist

        def counted_tolist(t):
            counter.hit("tolist")
            return tolist(t)
        torch.Tensor.tolist = counted_tolist
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            hits = [w for w in self._seen if "synchroniz" in str(w.message).lower()]
            self.count, self.calls = len(hits), [str(w.message)[:120] for w in hits]
            self._warnings.__exit__(*exc)
            return False
        self._mode.__exit__(*exc)
        torch.Tensor.tolist = self._tolist
        return False


def measure(s, sides, desc, with_model=True):
    """sides: {"ours": wrap, "hf": wrap}, wrap(model) -> run: model is ours, or HF's LLaMA with the same initial
    weights (None where with_model is False); run(i) does work item i and returns what the parity checks compare.
    Returns {side: {"times", "peak_mem", "first"}}: the timed runs, the peak memory, run(0)'s result."""
    sides = {"ours": sides["ours"]} if s.no_hf else sides
    dev, init, out = s.device, {}, {}
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    bar = tqdm(total=(s.warmup + s.steps) * len(sides), desc=desc, unit="run", file=sys.stderr, leave=False)

    def make(side):  # -> (run, parameter bytes)
        if not with_model:
            return sides[side](None), 0
        model = (build_ours(s, s.args, dev, s.dtype, init) if side == "ours" else
                 build_hf(s.args, init.pop("sd"), dev, s.dtype))
        return sides[side](model), sum(p.numel() * p.element_size() for p in set(model.parameters()))

    def timed(run, i):
        sync()
        t0 = time.perf_counter()
        run(i)
        sync()
        bar.update(1)
        return time.perf_counter() - t0

    def warm(side, run, pbytes, base):
        out[side] = {"times": [], "first": run(0)}
        bar.update(1)
        for i in range(1, s.warmup):
            timed(run, i)
        out[side]["peak_mem"] = peak_memory(dev) - base + (pbytes if dev.type == "cpu" else 0)

    if dev.type == "cpu":  # every side built first (HF copies ours' initial weights), then they alternate
        built = {side: make(side) for side in sides}
        for side, (run, pbytes) in built.items():
            warm(side, run, pbytes, peak_memory(dev, reset=True))
        for i in range(s.steps):
            for side, (run, _) in built.items():
                out[side]["times"].append(timed(run, s.warmup + i))
    else:  # one side at a time: two 7B models and their optimizer states do not fit one GPU
        for side in sides:
            base = peak_memory(dev, reset=True)
            run, pbytes = make(side)
            warm(side, run, pbytes, base)
            out[side]["times"] = [timed(run, s.warmup + i) for i in range(s.steps)]
            del run
            torch.compiler.reset()  # compiled code can hold the model: free it before the next side is built
            peak_memory(dev, reset=True)
    bar.close()
    return out


def compare(s, sides, desc, units, row, flops=None, with_model=True):
    """Measure the sides and put each one's figures in row (the mode's fields). units (and flops): per timed run,
    a list, or one number when every run does the same work. Rates are medians of the per-run rates, so that a run
    slowed by background load counts once, not by its length. Returns (row, {side: run(0)'s result})."""
    res = measure(s, sides, desc, with_model)
    for side, r in res.items():
        times = r["times"]
        per_run = units if isinstance(units, list) else [units] * len(times)
        row[side] = {"median_s": round(statistics.median(times), 6),
                     "per_s": round(statistics.median(u / t for u, t in zip(per_run, times)), 3),
                     "peak_mem_gb": round(r["peak_mem"] / 1e9, 3), "times_s": [round(t, 6) for t in times]}
        if flops and s.peak:
            row[side]["mfu"] = round(statistics.median(f / t for f, t in zip(flops, times)) / s.peak, 4)
    return row, {side: r["first"] for side, r in res.items()}


# -----------------------------------------------------------------------------
# the modes: function(s) -> the mode's row fields

def alpaca_lengths(n, seq_len, gen):
    """n (prompt, completion) token counts drawn from the Alpaca percentiles (inverse-CDF sampling, linear between
    the tabulated points), the total cut at seq_len + 1 tokens (seq_len targets)."""
    u = torch.rand(2, n, generator=gen, dtype=torch.float64).numpy()
    prompt, completion = (np.maximum(1, np.round(np.interp(x, ALPACA_Q, points))).astype(np.int64)
                          for x, points in zip(u, (ALPACA_PROMPT, ALPACA_COMPLETION)))
    prompt = np.minimum(prompt, seq_len)
    return list(zip(prompt.tolist(), np.minimum(completion, seq_len + 1 - prompt).tolist()))


def train_batches(n, batch_size, grad_accum, seq_len, vocab, plw, gen, budget=0, pack=False):
    """n global batches of random tokens at Alpaca lengths: "micro", the fixed-size micro-batches of batch_size rows
    (padded to a multiple of 8), [(idx, targets, w)], for HF; "ours", the micro-batches as train.py makes them
    (train.host_batch: cut by tokens or packed when budget > 0), dicts of tensors; "wsum", "tokens", "padded" (micro's),
    "ours_padded", "lens"."""
    import train
    G = batch_size * grad_accum
    pairs = np.array(alpaca_lengths(n * G, seq_len, gen)).reshape(-1, 2)
    lengths = pairs.sum(1)                                                  # [BOS] prompt ... completion [EOS]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = torch.randint(3, vocab, (int(offsets[-1]),), generator=gen).numpy()
    tokens[offsets[:-1]] = 1
    pos = np.arange(len(tokens)) - np.repeat(offsets[:-1], lengths)
    data = {"tokens": tokens, "offsets": offsets, "roles": (pos >= np.repeat(pairs[:, 0], lengths)).astype(np.uint8)}
    seed = int(torch.randint(1 << 30, (1,), generator=gen))
    out = []
    for it in range(n):
        ids = step_examples(it, n * G, G, seed)
        fixed = split_micro_batches(ids, lengths, batch_size, grad_accum)
        ours = (pack_rows(ids, lengths, budget, 1, 8) if pack else split_by_tokens(ids, lengths, budget, 1, 8)
                if budget else fixed)
        micro = [collate(data, m, plw, 8)[:3] for m in fixed]
        wsum = sum(float(w.sum()) for _, _, w in micro)
        factors = np.full(len(ids), 1 / wsum)  # global normalisation
        out.append({"micro": micro, "ours": [train.host_batch(data, m, plw, 8, pack, 1.0, ids, factors) for m in ours],
                    "wsum": wsum, "tokens": target_counts(data, ids)[0],
                    "padded": sum(x.numel() for x, _, _ in micro), "ours_padded": padded_tokens(ours, lengths, 8, pack),
                    "lens": (lengths[ids] - 1).tolist()})
    return out


def bench_train(s):
    import train
    with torch.device("meta"):
        meta = Transformer(s.args)  # for flops_per_token only: no memory
    batches = train_batches(s.warmup + s.steps, s.batch_size, s.grad_accum, s.seq_len, s.args.vocab_size, s.plw,
                            torch.Generator().manual_seed(s.seed), s.tokens_per_micro_batch, s.pack)
    micro = [[tuple(t.to(s.device) for t in m) for m in b["micro"]] for b in batches]
    ours_micro = [[{k: t.to(s.device) for k, t in m.items()} for m in b["ours"]] for b in batches]

    def step(model, micro_losses):
        """The timed step, the same for both sides but for micro_losses(i): each micro-batch's loss, a generator."""
        hp = dict(lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
        opt = AdamWBF16(model.parameters(), **hp) if s.optimizer == "adamw_bf16" else torch.optim.AdamW(
            model.parameters(), **hp, **({"fused": True} if s.device.type == "cuda" else {"foreach": True}))
        if s.compile and s.optimizer == "adamw_bf16":
            opt.compile()  # train.py's fused update (both sides: the optimizer is not what is compared)

        def run(i):
            total = 0.0
            for loss in micro_losses(i):
                loss.backward()
                total += loss.detach()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(total) if i == 0 else None
        return run

    def ours(model):  # train.py's path: per-block compile, its micro-batches (cut by tokens or packed), its loss
        model.train()
        model.activation_checkpointing, model.checkpoint_every = s.activation_checkpointing, s.checkpoint_every
        if s.compile:
            model.compile_blocks()

        def micro_losses(i):
            for b in ours_micro[i]:
                yield train.micro_loss(model, b["x"], b["y"], b["wl"], 0.0,  # wl: the weights / the batch's sum
                                       **{k: b[k] for k in ("keep", "input_pos", "doc") if k in b})[0]
        return step(model, micro_losses)

    def hf(model):
        model.train()
        if s.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        fwd = torch.compile(model) if s.compile else model

        def micro_losses(i):  # the plain loop: fp32 logits for the whole micro-batch of batch_size rows
            for idx, targets, w in micro[i]:
                logits = fwd(input_ids=idx, use_cache=False).logits                      # (B, T, V)
                ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                                     reduction="none").view_as(targets)                  # (B, T)
                yield (ce * w).sum() / batches[i]["wsum"]
        return step(model, micro_losses)

    timed = batches[s.warmup:]
    tokens = [b["tokens"] for b in timed]
    padded = {"ours": [b["ours_padded"] for b in timed], "hf": [b["padded"] for b in timed]}
    flops = [sum(meta.flops_per_token(L) * L for L in b["lens"]) for b in timed]  # useful FLOPs: no padding
    row = {"units": "tokens/s (non-padding)", "tokens_per_step": statistics.mean(tokens),
           "padded_tokens_per_step": statistics.mean(padded["ours"]),
           "hf_padded_tokens_per_step": statistics.mean(padded["hf"]),
           "micro_steps": statistics.mean(len(b["ours"]) for b in timed), "flops_per_step": statistics.mean(flops)}
    row, first = compare(s, {"ours": ours, "hf": hf}, "train", tokens, row, flops)
    for side in first:
        row[side]["padded_per_s"] = round(statistics.median(p / t for p, t in zip(padded[side], row[side]["times_s"])),
                                          3)
        row[side]["first_loss"] = first[side]
    if "hf" in first:
        row["loss_diff"] = abs(first["ours"] - first["hf"])
    return row


def bench_generate(s):
    gen = torch.Generator().manual_seed(s.seed)
    lens = torch.linspace(20, 60, s.batch_size).round().long().tolist() if s.batch_size > 1 else [40]
    prompts = [[1] + torch.randint(3, s.args.vocab_size, (n - 1,), generator=gen).tolist() for n in lens]
    T, n_new = max(lens), s.new_tokens
    if T + n_new > s.args.max_seq_len:
        raise DataError(f"new_tokens {n_new} + prompts of up to {T} tokens exceed the model's max_seq_len "
                        f"{s.args.max_seq_len}")

    def ours(model):
        model.eval()
        return lambda i: [o[len(p):] for o, p in zip(model.generate(prompts, n_new), prompts)]

    def hf(model):  # left-padded, with an attention mask: how HF batches prompts of different lengths
        model.eval()
        ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=s.device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=s.device)
        return lambda i: model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)[:, T:].tolist()

    row = {"units": "new tokens/s", "prompts": len(prompts), "prompt_lens": lens, "new_tokens": n_new}
    row, first = compare(s, {"ours": ours, "hf": hf}, "generate", len(prompts) * n_new, row)
    if "hf" in first:
        row["same_tokens"] = sum(x == y for x, y in zip(first["ours"], first["hf"])) / len(prompts)
    return row


def bench_mc(s):
    from eval import mc
    from tokenizer import Tokenizer
    tasks = [t.strip() for t in s.mc_tasks.split(",") if t.strip()]
    mc.check_tasks(tasks)
    docs = {t: mc.load_docs(t, s.mc_data_dir, s.mc_limit) for t in tasks}
    tokenizer = Tokenizer(s.tokenizer)
    requests = [(t, d["doc_id"], pair) for t in tasks for d in docs[t] for pair in zip(d["contexts"],
                                                                                        d["continuations"])]

    def ours(model):
        model.eval()

        def run(i):
            out = mc.evaluate(model, tokenizer, tasks, s.mc_data_dir, s.mc_limit, s.mc_batch_size, progress=False)
            return [ll for t in tasks for d in out["samples"][t] for ll in d["lls"]]
        return run

    def hf(model):  # the harness's HFLM handed the model, with HF's slow LLaMA tokenizer, as the harness loads it
        import logging
        import transformers
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on being handed a model object
        lm = HFLM(pretrained=model.eval(), tokenizer=transformers.LlamaTokenizer(vocab_file=s.tokenizer, legacy=True),
                  batch_size=s.mc_batch_size, max_length=s.args.max_seq_len, softmax_dtype=torch.float32)
        insts = [Instance("loglikelihood", {}, pair, i, metadata=(t, doc_id, 1))
                 for i, (t, doc_id, pair) in enumerate(requests)]
        return lambda i: [ll for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]

    n_docs = sum(map(len, docs.values()))
    row = {"units": "documents/s", "tasks": tasks, "limit": s.mc_limit, "documents": n_docs,
           "requests": len(requests), "mc_batch_size": s.mc_batch_size}
    row, first = compare(s, {"ours": ours, "hf": hf}, "mc", n_docs, row)
    if "hf" in first:
        row["max_abs_ll_diff"] = max(abs(x - y) for x, y in zip(first["ours"], first["hf"]))
    return row


# name -> (function(s) -> the mode's row fields, the peer packages it needs unless no_hf); docs/benchmarks.md
# -----------------------------------------------------------------------------
# the plan: a training step's memory and time from stated formulas (docs/benchmarks.md derives them;
# tests/test_throughput.py holds the memory formulas against what a small model keeps on the CPU)

GPUS = {"H100": dict(peak=989e12, hbm=3.35e12, memory=80e9), "H200": dict(peak=989e12, hbm=4.8e12, memory=141e9),
        "A100": dict(peak=312e12, hbm=2.0e12, memory=80e9)}  # dense bf16 FLOP/s, HBM bytes/s, bytes (SXM)
# assumed, until bench/gpu_check.sh's gemm check measures them: a bf16 GEMM over M tokens reaches
# GEMM_MAX * M / (M + GEMM_HALF) of the peak (tile and wave quantisation cost small M), fused attention ATTN_EFF
GEMM_MAX, GEMM_HALF, ATTN_EFF = 0.75, 400, 0.35


def activation_bytes(args, e, compiled, autocast):
    """Bytes autograd keeps per token in one block, e the compute dtype's bytes (measured on the CPU,
    tests/test_throughput.py). Eager: each RMSNorm its fp32 input (4d), its normalised value (e d) and 1/rms (4), the
    normed input of the q/k/v and gate/up matmuls (e d each), q after RoPE and the attention's output (2 e q), k and v
    (2 e kv), the logsumexp (4 per head), SwiGLU's gate, silu(gate), up and product (4 e h). Compiled blocks: the
    min-cut partitioner recomputes the norms and silu: 4 e d and 3 e h. Under autocast (fp32 weights) the norms and
    the residual stream stay fp32: 26 d eager, 10 d compiled."""
    d, q, kv = args.dim, args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    dcoef = (10 if compiled else 26) if autocast else (4 * e if compiled else 8 + 4 * e)
    return dcoef * d + 2 * e * (q + kv) + (3 if compiled else 4) * e * args.hidden_dim + 4 * args.n_heads + 8


def head_bytes(args, e, tokens, chunk):
    """Bytes the final norm and the chunked cross-entropy keep for `tokens` tokens: the norm as a block's, the head's
    input, targets and logsumexp ((4 + 2 e) d + 24 per token), and the softmax when all rows fit one chunk"""
    return tokens * ((4 + 2 * e) * args.dim + 24) + (tokens * args.vocab_size * 4 if tokens <= chunk else 0)


def step_plan(args, c, batches):
    """Memory and time of one optimizer step on each of c["world"] GPUs. c: optimizer, dtype, compiled, ckpt_blocks
    (blocks recomputed), world, gpu. batches: the step's work, split_plan's. Returns a dict: memory (bytes: weights,
    gradients, optimizer, autocast copies, activations, transient, peak), FLOPs, bytes moved and seconds per GPU,
    step_s, tokens/s per GPU, mfu. Not modelled: FSDP2's and DDP's communication, compute-communication overlap, the
    allocator's fragmentation (bench/gpu_check.sh measures reserved memory)."""
    gpu, L, V, d = GPUS[c["gpu"]], args.n_layers, args.vocab_size, args.dim
    with torch.device("meta"):
        m = Transformer(args)
    n_all, n_body = m.num_params(exclude_embedding=False), m.num_params()
    n_layer_mm = sum(p.numel() for p in m.layers[0].parameters() if p.dim() == 2)  # the matmuls' weights
    e = 2 if c["dtype"] == "bfloat16" else 4
    autocast = c["optimizer"] == "adamw" and e == 2 and c["world"] == 1  # FSDP2 casts the weights itself
    w = 2 if c["optimizer"] == "adamw_bf16" else 4                         # weights, gradients, AdamW moments
    a = activation_bytes(args, e, c["compiled"], autocast)
    k = c["ckpt_blocks"]
    chunk = max(1, 2 ** 26 // V)
    T = batches["micro_max"]                                               # the largest micro-step (padded)
    mem = {"weights": n_all * w / c["world"], "gradients": n_all * w / c["world"],
           "optimizer": 2 * n_all * w / c["world"],
           # autocast's bf16 copy of each weight, kept for backward by the blocks that are not recomputed
           "autocast_copies": 2 * n_layer_mm * (L - k) if autocast else 0,
           "activations": T * ((L - k) * a + k * (4 if autocast else e) * d) + head_bytes(args, e, T, chunk),
           # backward's extra, the larger of: a recomputed block; the head's logits (fp32 + their cast), its fp32 grad
           "transient": max(T * a if k else 0, min(T, chunk) * V * (4 + e) + V * d * 4)}
    mem["peak"] = sum(mem.values())
    tokens = batches["padded"] / c["world"]                                # one GPU's, padding included
    # a recomputed block reruns its forward up to the last tensor backward needs (non-reentrant checkpointing stops
    # early): all but the down projection; the head recomputes its logits when they span more than one chunk
    recompute = 2 * (n_layer_mm - d * args.hidden_dim) * k
    flops = {"matmul": tokens * (6 * n_body + recompute) + (tokens * 2 * d * V if T > chunk else 0),
             "attention": 6 * L * args.n_heads * args.head_dim * batches["attn_sq"] / c["world"] * (1 + k / (3 * L))}
    eff = GEMM_MAX * batches["micro_mean"] / (batches["micro_mean"] + GEMM_HALF)
    nbytes = {"elementwise": 3 * a * L * tokens, "optimizer": 7 * w * n_all / c["world"],
              "grad_accumulation": 3 * w * n_all / c["world"] * (batches["micro_steps"] - 1)}
    secs = {"matmul": flops["matmul"] / (gpu["peak"] * eff), "attention": flops["attention"] / (gpu["peak"] * ATTN_EFF),
            **{k_: v / gpu["hbm"] for k_, v in nbytes.items()}}
    step_s = sum(secs.values())
    return {"memory": mem, "fits": mem["peak"] <= gpu["memory"],
            "gemm_efficiency": round(eff, 3), "flops": flops, "bytes": nbytes,
            "seconds": {k_: round(v, 4) for k_, v in secs.items()}, "step_s": round(step_s, 4),
            "useful_flops": batches["useful_flops"], "tokens_per_s": round(batches["tokens"] / step_s / c["world"], 1),
            "mfu": round(batches["useful_flops"] / step_s / (gpu["peak"] * c["world"]), 4)}


def split_plan(lengths, G, c, f0, f1):
    """One optimizer step's work, averaged over global batches of G examples of the given lengths (BOS included),
    split as train.py splits them (c: batch_size, grad_accum, tokens_per_micro_batch, pack, world): real and padded
    tokens, micro-steps per rank, their mean and largest padded tokens, the sum of squared attention lengths, useful
    FLOPs (f0 + f1 T per token of a sequence of T targets)."""
    steps, n = [], len(lengths)
    for it in range(n // G):
        ids = step_examples(it, n, G, 0)
        budget, world = c["tokens_per_micro_batch"], c["world"]
        micro = (pack_rows(ids, lengths, budget, world, 8) if c["pack"] else
                 split_by_tokens(ids, lengths, budget, world, 8) if budget else
                 split_micro_batches(ids, lengths, c["batch_size"], c["grad_accum"] * world))
        T = (lengths[ids] - 1).astype(np.float64)
        per = [padded_tokens([mb], lengths, 8, c["pack"]) for mb in micro]
        attn = float((T ** 2).sum()) if c["pack"] else sum(p ** 2 / len(mb) for p, mb in zip(per, micro))
        steps.append({"tokens": T.sum(), "padded": sum(per), "attn_sq": attn, "micro_steps": len(micro) / world,
                      "micro_max": max(per), "useful_flops": float(f0 * T.sum() + f1 * (T * T).sum())})
    out = {k: statistics.mean(s_[k] for s_ in steps) for k in steps[0]}
    out["micro_max"] = max(s_["micro_max"] for s_ in steps)  # memory: the largest micro-step of all
    out["micro_mean"] = out["padded"] / (out["micro_steps"] * c["world"])
    return out


def bench_plan(s):
    """The plan for --model at the train settings, on Stanford Alpaca's lengths (the ALPACA_* percentiles)"""
    G = s.batch_size * s.grad_accum * s.world
    pairs = np.array(alpaca_lengths(max(50, 4096 // G) * G, s.seq_len, torch.Generator().manual_seed(s.seed)))
    with torch.device("meta"):
        m = Transformer(s.args)
    f0 = m.flops_per_token(0)
    c = {"optimizer": s.optimizer, "dtype": s.dtype_name, "compiled": s.compile, "world": s.world, "gpu": s.gpu,
         "ckpt_blocks": len(range(0, s.args.n_layers, s.checkpoint_every)) if s.activation_checkpointing else 0,
         "batch_size": s.batch_size, "grad_accum": s.grad_accum, "tokens_per_micro_batch": s.tokens_per_micro_batch,
         "pack": s.pack}
    b = split_plan(pairs.sum(1), G, c, f0, m.flops_per_token(1) - f0)
    p = step_plan(s.args, c, b)
    p.update(units="plan", global_batch=G, tokens_per_step=round(b["tokens"], 1),
             padding=round(1 - b["tokens"] / b["padded"], 4), micro_steps=round(b["micro_steps"], 2),
             micro_tokens_max=b["micro_max"], micro_tokens_mean=round(b["micro_mean"], 1), gpu=s.gpu,
             world=s.world, ckpt_blocks=c["ckpt_blocks"], flops={k: float(v) for k, v in p["flops"].items()},
             bytes={k: float(v) for k, v in p["bytes"].items()})
    mg = p["memory_gb"] = {k: round(v / 1e9, 2) for k, v in p.pop("memory").items()}
    split = (f"packed rows of <= {s.tokens_per_micro_batch} tokens" if s.pack else
             f"micro-steps of <= {s.tokens_per_micro_batch} padded tokens" if s.tokens_per_micro_batch else
             f"{s.grad_accum} micro-steps of {s.batch_size} rows")
    p["report"] = [
        f"plan: {s.model} on {s.world} x {s.gpu}, {s.optimizer}, {s.dtype_name}, "
        f"{'compiled blocks' if s.compile else 'eager'}, {split}, {c['ckpt_blocks']} of {s.args.n_layers} blocks "
        f"recomputed",
        f"  memory per GPU (GB): weights {mg['weights']} + gradients {mg['gradients']} + optimizer {mg['optimizer']}"
        f" + autocast copies {mg['autocast_copies']} + activations {mg['activations']} ({b['micro_max']:.0f} "
        f"tokens) + transient {mg['transient']} = peak {mg['peak']} of {GPUS[s.gpu]['memory'] / 1e9:.0f}"
        f" ({'fits' if p['fits'] else 'does not fit'})",
        f"  a step (global batch {G}, Alpaca lengths): {b['tokens']:,.0f} tokens, {p['padding']:.1%} padding, "
        f"{p['micro_steps']} micro-steps per GPU of {b['micro_mean']:,.0f} tokens",
        f"  matmuls {p['flops']['matmul']:.3g} FLOPs at {p['gemm_efficiency']:.0%} of {GPUS[s.gpu]['peak'] / 1e12:.0f}"
        f" TFLOP/s: {p['seconds']['matmul']:.3f} s; attention {p['flops']['attention']:.3g}: "
        f"{p['seconds']['attention']:.3f} s",
        f"  memory traffic at {GPUS[s.gpu]['hbm'] / 1e12:.2f} TB/s: elementwise {p['bytes']['elementwise']:.3g} B "
        f"{p['seconds']['elementwise']:.3f} s, optimizer {p['bytes']['optimizer']:.3g} B {p['seconds']['optimizer']:.3f}"
        f" s, gradient accumulation {p['bytes']['grad_accumulation']:.3g} B {p['seconds']['grad_accumulation']:.3f} s",
        f"  step {p['step_s']:.3f} s, {p['tokens_per_s']:,.0f} tokens/s per GPU, expected MFU {p['mfu']:.1%} "
        f"(useful {p['useful_flops']:.3g} FLOPs)"]
    return p


def bench_padding(s):
    """Padding of each split on a real data set's lengths (tokenized with --tokenizer, cut at --seq_len): the fixed
    batch_size rows, the token budgets cut (split_by_tokens) and packed (pack_rows), over one epoch"""
    from data.prepare import prepare_dataset
    data, _, _ = prepare_dataset(s.dataset, s.tokenizer, s.seq_len, val_size=0, seed=s.seed, verbose=False)
    lengths, G = np.diff(data["offsets"]), s.batch_size * s.grad_accum
    rows, report = {}, [f"padding: {s.dataset}, {len(lengths):,} examples, global batch {G}, padded to multiples of 8"]
    splits = [("rows", 0, False)] + [(f"{kind}{b}", b, kind == "pack") for kind in ("tokens", "pack")
                                     for b in map(int, s.budgets.split(","))]
    for name, budget, pack in splits:
        c = {"batch_size": s.batch_size, "grad_accum": s.grad_accum, "tokens_per_micro_batch": budget, "pack": pack,
             "world": 1}
        b = split_plan(lengths, G, c, 0.0, 0.0)
        rows[name] = {"padding": round(1 - b["tokens"] / b["padded"], 4), "micro_steps": round(b["micro_steps"], 2)}
        report.append(f"  {name:>12}: {rows[name]['padding']:6.1%} padding, {rows[name]['micro_steps']} micro-steps")
    return {"units": "padding", "examples": len(lengths), "global_batch": G, "splits": rows, "report": report}


MODES = {"train": (bench_train, ["transformers"]), "generate": (bench_generate, ["transformers"]),
         "mc": (bench_mc, ["transformers", "lm_eval"]), "plan": (bench_plan, []), "padding": (bench_padding, [])}


# -----------------------------------------------------------------------------
# set-up, report, main

def setup(c):
    """The checked config as a namespace, with what it implies: modes, the torch device and dtype (dtype_name: its
    name), the model's ModelArgs (args), the GPU's bf16 peak FLOP/s (peak)."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for k in ("batch_size", "grad_accum", "seq_len", "new_tokens", "steps", "warmup", "mc_limit", "mc_batch_size",
              "checkpoint_every", "world"):
        need(c[k] >= 1, f"--{k} must be a positive integer, got {c[k]}")
    need(c["threads"] >= 0, f"--threads must be >= 0 (0: torch's default), got {c['threads']}")
    need(c["seq_len"] % 8 == 0, f"--seq_len must be a multiple of 8 (the micro-batch padding), got {c['seq_len']}")
    need(c["tokens_per_micro_batch"] >= 0, f"--tokens_per_micro_batch must be >= 0, got {c['tokens_per_micro_batch']}")
    need(c["tokens_per_micro_batch"] or not c["pack"], "--pack=True needs --tokens_per_micro_batch > 0 (the rows' length)")
    for k, allowed in {"dtype": DTYPES, "optimizer": ("adamw", "adamw_bf16"), "gpu": GPUS}.items():
        need(c[k] in allowed, f"--{k}: invalid choice: {c[k]!r} (choose from {', '.join(allowed)})")
    s = SimpleNamespace(**c)
    s.modes = [m.strip() for m in c["mode"].split(",") if m.strip()]
    for m in [m for m in s.modes if m not in MODES] or ([] if s.modes else [c["mode"]]):
        raise ConfigError(f"unknown mode {m!r}: expected a comma-separated list of {', '.join(MODES)}")
    try:
        s.device = torch.device(c["device"])
    except RuntimeError:
        s.device = torch.device("meta")  # refused below
    need(s.device.type in ("cpu", "cuda"), f"unknown device {c['device']!r}: expected cpu or cuda[:N]")
    need(s.device.type == "cpu" or torch.cuda.is_available(), "--device cuda: no CUDA device is available")
    s.model, s.args = load_shape(c["model"])
    need("train" not in s.modes or s.seq_len <= s.args.max_seq_len,
         f"--seq_len {s.seq_len} exceeds the model's max_seq_len {s.args.max_seq_len}")
    for pkg in sorted({p for m in s.modes for p in MODES[m][1]} if not s.no_hf else ()):
        need(find_spec(pkg) is not None, f"the peer needs {pkg} (pip install {pkg}), or pass --no_hf=True")
    if s.json:
        check_writable(s.results)
    if s.threads:
        torch.set_num_threads(s.threads)
    s.dtype_name, s.dtype, s.device_name = c["dtype"], DTYPES[c["dtype"]], device_name(s.device)
    s.peak = next((v for k, v in PEAK_BF16.items() if k in s.device_name), None) if c["dtype"] == "bfloat16" else None
    return s


def print_row(row):
    shape = f", batch {row['batch_size']} x {row['grad_accum']}, seq_len {row['seq_len']}" * (row["mode"] == "train")
    print(f"{row['mode']}: {row['model']}, {row['dtype']}, {row['device']}{shape}")
    for side, r in [(side, row[side]) for side in ("ours", "hf") if row[side]]:
        mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
        print(f"  {side:4} {r['per_s']:>12,.1f} {row['units']}, median {r['median_s']:.4f} s, "
              f"peak {r['peak_mem_gb']:.3f} GB{mfu}")
    notes = [f"ours / HF: {row['ratio']:.2f}x"] if row["ratio"] else []
    notes += [f"{k}: {row[k]:.3g}" for k in ("loss_diff", "same_tokens", "max_abs_ll_diff") if k in row]
    if notes:
        print("  " + ", ".join(notes))


def append_row(path, row):
    """Append a JSON line atomically: the old file plus the new row go to a temp file that replaces it."""
    old = Path(path).read_bytes() if Path(path).exists() else b""
    new = (old if not old or old.endswith(b"\n") else old + b"\n") + (dumps(row) + "\n").encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(new))


def main(argv):
    s = setup(load_config(DEFAULTS, argv, source=__file__, usage=__doc__.strip()))
    busy = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # before our own work counts
    timed = any(m not in ("plan", "padding") for m in s.modes)
    if timed and busy is not None and busy + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        print(f"bench.py: warning: a load average of {busy:.1f} on {os.cpu_count()} CPUs competes with "
              f"{torch.get_num_threads()} threads: times are inflated and ratios squeezed", file=sys.stderr)
    for m in s.modes:
        row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": s.device_name,
               "threads": torch.get_num_threads() if s.device.type == "cpu" else None, "torch": torch.__version__,
               "transformers": version("transformers") if find_spec("transformers") else None,
               "command": shlex.join(["python", "bench.py", *argv]), "mode": m, "model": s.model,
               "params": n_params(s.args), "dtype": s.dtype_name, "peak_flops": s.peak,
               **{k: getattr(s, k) for k in ("batch_size", "grad_accum", "seq_len", "steps", "warmup", "compile",
                                             "optimizer", "activation_checkpointing", "checkpoint_every",
                                             "tokens_per_micro_batch", "pack")}}
        try:
            row.update(MODES[m][0](s))
        except torch.cuda.OutOfMemoryError:
            raise DataError(f"{m}: out of memory at batch_size {s.batch_size}: try a smaller batch_size (with a "
                            f"larger grad_accum for the same global batch)") from None
        row["busy_elsewhere"] = busy  # the 1-minute load average when bench.py started: was the machine quiet?
        if "report" in row:  # a computed mode (plan, padding): nothing timed
            print("\n".join(row.pop("report")))
        else:
            row.setdefault("hf", None)
            row["ratio"] = round(row["ours"]["per_s"] / row["hf"]["per_s"], 3) if row["hf"] else None
            row["peak_mem_gb"], row["mfu"] = row["ours"]["peak_mem_gb"], row["ours"].get("mfu")
            print_row(row)
        if s.json:  # each mode's row as soon as it is measured: a later failure keeps it
            append_row(s.results, row)
            print(f"appended the {m} row to {s.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli(main, "bench.py")
