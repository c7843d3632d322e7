"""
The yardstick: throughput, memory and MFU of nanoPLW against its peer (HF transformers, lm-eval) in one process,
on the identical model (random weights, copied into transformers.LlamaForCausalLM) and the identical inputs.

    python bench.py --model=tiny                                    # CPU float32: train, generate, mc
    python bench.py --model=tiny --mode=train --steps=20 --json=True  # + a row in bench/results.jsonl
    python bench.py --model=llama2-7b --mode=train --device=cuda --dtype=bfloat16 --compile=True \\
        --batch_size=4 --grad_accum=32 --optimizer=adamw_bf16 --json=True  # global batch 128 on one 80 GB GPU
    python bench.py --help                                          # every option, its default and meaning

Modes: train (one optimizer step on Alpaca-like batches vs HF + the plain loss loop), generate (greedy decoding vs
HF generate), mc (multiple-choice scoring vs lm-eval's HFLM), prep (Alpaca preparation vs Stanford's). Each prints
ours, the peer and the ratio ours/peer; json=True appends one row per mode. docs/benchmarks.md: what each side
does, how the sides alternate, what peak memory and MFU count.
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
from data.batch import collate, split_micro_batches, step_examples, target_counts
from model import Transformer
from optim import AdamWBF16
from util import DataError, atomic_write, check_writable, cli

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("NANOPLW_SHARED", ROOT.parent / "shared"))  # as tests/conftest.py finds it

# -----------------------------------------------------------------------------
# default config
model = "tiny"                  # tiny | llama-1b | llama2-7b (SHAPES below) or an HF config.json (or its directory);
                                # the weights are always random
mode = "train,generate,mc"      # comma-separated, from MODES: train, generate, mc, prep
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
mc_data_dir = ""                # mc: HF-datasets layout directory; "" = ../shared/data/eval/hf
tokenizer = ""                  # mc, prep: sentencepiece tokenizer.model; "" = ../shared's LLaMA tokenizer
prep_data = ""                  # prep: Alpaca-format file; "" = ../shared's Stanford Alpaca (52,002 records)
prep_limit = 0                  # prep: the first N records only; 0 = all
steps = 10                      # timed repeats per side
warmup = 2                      # untimed repeats per side before them (at least 1)
threads = 0                     # CPU threads; 0 = torch's default
seed = 0                        # fixes the weights, the batches and the prompts
compile = False                 # train: torch.compile both models
optimizer = "adamw"             # train: adamw (torch's, fused on CUDA) | adamw_bf16 (optim.py: bf16 weights and
                                # state, stochastic rounding; with dtype=bfloat16)
activation_checkpointing = False  # train: recompute each block's activations in backward (both sides)
no_hf = False                   # measure ours only (no peer package needed)
json = False                    # append one row per mode to `results`
results = str(ROOT / "bench" / "results.jsonl")  # the JSON-lines file json=True appends to
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

# named shapes, as HF config.json fields; max_position_embeddings only sizes the RoPE tables
SHAPES = {
    # the CPU yardstick: 4 layers, 256 wide (4 heads of 64, no GQA), LLaMA's 32k vocabulary and SwiGLU width rule
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    # TinyLlama-1.1B's config.json: LLaMA-2 architecture and tokenizer, 22 layers, GQA 32 query / 4 kv heads
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    # LLaMA-2-7B's config.json (meta-llama/Llama-2-7b-hf)
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# dense bf16 tensor-core peaks (FLOP/s); the first match in the device name wins (the PCIe H100 is slower)
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
# Stanford Alpaca (52,002 records, its prompt template, LLaMA tokenizer): percentiles 0, 5, ..., 95, 99, 100 of the
# prompt length ([BOS] + template + instruction + input) and of the completion length (output + [EOS])
ALPACA_Q = [0.0] + [q / 100 for q in range(5, 100, 5)] + [0.99, 1.0]
ALPACA_PROMPT = [39, 43, 45, 45, 46, 47, 48, 49, 50, 51, 53, 55, 63, 68, 70, 73, 76, 79, 84, 95, 134, 656]
ALPACA_COMPLETION = [1, 5, 8, 11, 13, 16, 20, 24, 30, 38, 48, 58, 68, 77, 87, 97, 108, 122, 141, 177, 298, 1228]


# -----------------------------------------------------------------------------
# the machine and the two models

def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device):
    """CUDA: the peak allocated since the last reset. CPU: the process's peak RSS, which never goes down."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def mem_reset(device):
    """Start a peak-memory window; returns the baseline that peak_bytes is measured from."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return peak_bytes(device)


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


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


def build(cls, device, dtype):
    """cls() built directly on the device in the bench dtype (the RoPE tables too, as from_pretrained casts them)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls().to(dtype)
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


def make_optimizer(model, device, kind):
    # the same for both sides: torch's AdamW (fused on CUDA, foreach elsewhere), or train.py's bf16 AdamW
    if kind == "adamw_bf16":
        return AdamWBF16(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
    fast = dict(fused=True) if device.type == "cuda" else dict(foreach=True)
    return torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0, **fast)


# -----------------------------------------------------------------------------
# measuring: sides that build themselves, run work item i, and are timed alike (docs/benchmarks.md)

def measure(s, sides, desc):
    """sides: {name: build}, build() -> (run, parameter bytes); run(i) does work item i and returns what the
    first warm-up produced (for the parity checks). Returns {name: {"times", "peak_mem", "first"}}."""
    sides = {"ours": sides["ours"]} if s.no_hf else sides
    dev, out = s.device, {}
    bar = tqdm(total=(s.warmup + s.steps) * len(sides), desc=desc, unit="run", file=sys.stderr, leave=False)

    def timed(run, i):
        sync(dev)
        t0 = time.perf_counter()
        run(i)
        sync(dev)
        bar.update(1)
        return time.perf_counter() - t0

    def warm(name, run, pbytes, base):
        out[name] = {"times": [], "first": run(0)}
        bar.update(1)
        for i in range(1, s.warmup):
            timed(run, i)
        grown = peak_bytes(dev) - base
        out[name]["peak_mem"] = grown if dev.type == "cuda" else pbytes + grown

    if dev.type == "cpu":  # every side built first (HF copies ours' initial weights), then they alternate
        built = {name: make() for name, make in sides.items()}
        for name, (run, pbytes) in built.items():
            warm(name, run, pbytes, mem_reset(dev))
        for i in range(s.steps):
            for name, (run, _) in built.items():
                out[name]["times"].append(timed(run, s.warmup + i))
    else:  # one side at a time: two 7B models and their optimizer states do not fit one GPU
        for name, make in sides.items():
            base = mem_reset(dev)
            run, pbytes = make()
            warm(name, run, pbytes, base)
            out[name]["times"] = [timed(run, s.warmup + i) for i in range(s.steps)]
            del run
            torch.compiler.reset()  # compiled code can hold the model: free it before the next side is built
            mem_reset(dev)
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


def compare(s, sides, desc, units, row, flops=None):
    """Measure the sides; row (the mode's fields) gets each side's summary. Returns (row, {side: first result})."""
    res = measure(s, sides, desc)
    for side, r in res.items():
        row[side] = summary(r, units, flops, s.peak)
    return row, {side: r["first"] for side, r in res.items()}


# -----------------------------------------------------------------------------
# train

def alpaca_lengths(n, seq_len, gen):
    """n (prompt, completion) token counts drawn from the Alpaca percentiles (inverse-CDF sampling, linear
    between the tabulated points), the total cut at seq_len + 1 tokens (seq_len targets)."""
    u = torch.rand(2, n, generator=gen, dtype=torch.float64).numpy()
    prompt, completion = (np.maximum(1, np.round(np.interp(x, ALPACA_Q, pts))).astype(np.int64)
                          for x, pts in zip(u, (ALPACA_PROMPT, ALPACA_COMPLETION)))
    prompt = np.minimum(prompt, seq_len)
    return list(zip(prompt.tolist(), np.minimum(completion, seq_len + 1 - prompt).tolist()))


def train_batches(n, batch_size, grad_accum, seq_len, vocab, plw, gen):
    """n global batches of random tokens at Alpaca lengths, cut as train.py cuts them (data/batch.py: length-sorted
    micro-batches, padded to a multiple of 8): {"micro": [(idx, targets, w)], "wsum", "tokens", "padded", "lens"}."""
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
        micro = [collate(data, m, plw, 8)[:3] for m in split_micro_batches(ids, lengths, batch_size, grad_accum)]
        out.append({"micro": micro, "wsum": sum(float(w.sum()) for _, _, w in micro),
                    "tokens": target_counts(data, ids)[0], "padded": sum(x.numel() for x, _, _ in micro),
                    "lens": (lengths[ids] - 1).tolist()})
    return out


def bench_train(s):
    with torch.device("meta"):
        meta = Transformer(s.args)  # for flops_per_token only: no memory
    gen = torch.Generator().manual_seed(s.seed)
    batches = train_batches(s.warmup + s.steps, s.batch_size, s.grad_accum, s.seq_len, s.args.vocab_size, s.plw, gen)
    batches = [dict(b, micro=[tuple(t.to(s.device) for t in m) for m in b["micro"]]) for b in batches]
    init = {}

    def train_step(per_token_ce, model):
        """The timed step, the same for both sides but for per_token_ce: (idx, targets) -> (B, T) CE."""
        opt = make_optimizer(model, s.device, s.optimizer)

        def run(i):
            total = 0.0
            for idx, targets, w in batches[i]["micro"]:
                loss = (per_token_ce(idx, targets) * w).sum() / batches[i]["wsum"]
                loss.backward()
                total += loss.detach()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(total) if i == 0 else None
        return run, param_bytes(model)

    def ours():
        model = build_ours(s, s.args, s.device, s.dtype, init).train()
        model.activation_checkpointing = s.activation_checkpointing
        return train_step(torch.compile(model) if s.compile else model, model)  # model.py's chunked CE

    def hf():
        model = build_hf(s.args, init.pop("sd"), s.device, s.dtype).train()
        if s.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        fwd = torch.compile(model) if s.compile else model

        def per_token_ce(idx, targets):  # the plain loop: fp32 logits for the whole micro-batch
            logits = fwd(input_ids=idx, use_cache=False).logits                          # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                                   reduction="none").view_as(targets)                    # (B, T)
        return train_step(per_token_ce, model)

    timed = batches[s.warmup:]
    tokens, padded = [b["tokens"] for b in timed], [b["padded"] for b in timed]
    flops = [sum(meta.flops_per_token(L) * L for L in b["lens"]) for b in timed]  # useful FLOPs: no padding
    row = {"units": "tokens/s (non-padding)", "tokens_per_step": statistics.mean(tokens),
           "padded_tokens_per_step": statistics.mean(padded), "flops_per_step": statistics.mean(flops)}
    row, first = compare(s, {"ours": ours, "hf": hf}, "train", tokens, row, flops)
    for side in first:
        row[side]["padded_per_s"] = round(statistics.median(p / t for p, t in zip(padded, row[side]["times_s"])), 3)
        row[side]["first_loss"] = first[side]
    if "hf" in first:
        row["loss_diff"] = abs(first["ours"] - first["hf"])
    return row


# -----------------------------------------------------------------------------
# generate, mc, prep

def bench_generate(s):
    gen = torch.Generator().manual_seed(s.seed)
    lens = torch.linspace(20, 60, s.batch_size).round().long().tolist() if s.batch_size > 1 else [40]
    prompts = [[1] + torch.randint(3, s.args.vocab_size, (n - 1,), generator=gen).tolist() for n in lens]
    if max(lens) + s.new_tokens > s.args.max_seq_len:
        raise DataError(f"new_tokens {s.new_tokens} + prompts of up to {max(lens)} tokens exceed the model's "
                        f"max_seq_len {s.args.max_seq_len}")
    init = {}

    def ours():
        model = build_ours(s, s.args, s.device, s.dtype, init).eval()
        def run(i):
            return [o[len(p):] for o, p in zip(model.generate(prompts, s.new_tokens), prompts)]
        return run, param_bytes(model)

    def hf():  # the batch left-padded with its attention mask: how HF batches prompts of different lengths
        model = build_hf(s.args, init.pop("sd"), s.device, s.dtype).eval()
        T = max(lens)
        ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=s.device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=s.device)
        return (lambda i: model.generate(ids, attention_mask=mask, max_new_tokens=s.new_tokens, do_sample=False,
                                         eos_token_id=None, pad_token_id=0)[:, T:].tolist()), param_bytes(model)

    row = {"units": "new tokens/s", "prompts": len(prompts), "prompt_lens": lens, "new_tokens": s.new_tokens}
    row, first = compare(s, {"ours": ours, "hf": hf}, "generate", len(prompts) * s.new_tokens, row)
    if "hf" in first:
        row["same_tokens"] = sum(x == y for x, y in zip(first["ours"], first["hf"])) / len(prompts)
    return row


def tokenizer_path(s):
    return Path(s.tokenizer or SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model")


def bench_mc(s):
    from eval import mc
    from tokenizer import Tokenizer
    tasks = [t.strip() for t in s.mc_tasks.split(",") if t.strip()]
    data_dir = Path(s.mc_data_dir or SHARED / "data" / "eval" / "hf")
    mc.check_tasks(tasks)
    docs = {t: mc.load_docs(t, data_dir, s.mc_limit) for t in tasks}
    tokenizer = Tokenizer(tokenizer_path(s))
    requests = [(t, d["doc_id"], pair) for t in tasks for d in docs[t] for pair in zip(d["contexts"], d["continuations"])]
    init = {}

    def ours():
        model = build_ours(s, s.args, s.device, s.dtype, init).eval()

        def run(i):
            out = mc.evaluate(model, tokenizer, tasks, data_dir, s.mc_limit, s.mc_batch_size, progress=False)
            return [ll for t in tasks for d in out["samples"][t] for ll in d["lls"]]
        return run, param_bytes(model)

    def hf():
        import logging
        import transformers
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on being handed a model object
        model = build_hf(s.args, init.pop("sd"), s.device, s.dtype).eval()
        slow = transformers.LlamaTokenizer(vocab_file=str(tokenizer_path(s)), legacy=True)  # what the harness uses
        lm = HFLM(pretrained=model, tokenizer=slow, batch_size=s.mc_batch_size, max_length=s.args.max_seq_len,
                  softmax_dtype=torch.float32)
        insts = [Instance("loglikelihood", {}, pair, i, metadata=(t, doc_id, 1))
                 for i, (t, doc_id, pair) in enumerate(requests)]
        return (lambda i: [ll for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]), param_bytes(model)

    n_docs = sum(map(len, docs.values()))
    row = {"units": "documents/s", "tasks": tasks, "limit": s.mc_limit, "documents": n_docs,
           "requests": len(requests), "mc_batch_size": s.mc_batch_size}
    row, first = compare(s, {"ours": ours, "hf": hf}, "mc", n_docs, row)
    if "hf" in first:
        row["max_abs_ll_diff"] = max(abs(x - y) for x, y in zip(first["ours"], first["hf"]))
    return row


def bench_prep(s):
    """Alpaca preparation with a fresh cache every run, and prompt inversion, against Stanford Alpaca's own
    preprocessing (HF's slow LlamaTokenizer, string by string, truncated at 512) on the same records."""
    import shutil
    import tempfile
    import transformers
    from data.invert import invert_records
    from data.prepare import format_prompt, load_records, prepare_dataset
    work = Path(tempfile.mkdtemp())
    src = Path(s.prep_data or SHARED / "data" / "alpaca" / "alpaca_data.json.gz")
    records = load_records(src)[:s.prep_limit or None]
    (work / "records.json").write_text(dumps(records))  # both sides read exactly these records
    tok = tokenizer_path(s)

    def ours():
        def run(i):
            _, _, rep = prepare_dataset(str(work / "records.json"), str(tok), 512, cache_dir=work / f"c{i}",
                                        verbose=False)
            return [rep["tokens"], rep["prompt_tokens"]]
        return run, 0

    def hf():
        slow = transformers.LlamaTokenizer(vocab_file=str(tok), legacy=True)

        def run(i):
            sources = [format_prompt(r["instruction"], r["input"]) for r in records]
            full = [slow(x + r["output"] + slow.eos_token, max_length=512, truncation=True).input_ids
                    for x, r in zip(sources, records)]
            prompt = [slow(x, max_length=512, truncation=True).input_ids for x in sources]
            return [sum(map(len, full)), sum(min(len(p), len(f)) for p, f in zip(prompt, full))]
        return run, 0

    try:
        row, first = compare(s, {"ours": ours, "hf": hf}, "prep", len(records),
                             {"units": "records/s", "data": str(src), "records": len(records)})
        inv = measure(SimpleNamespace(**{**vars(s), "no_hf": True}),
                      {"ours": lambda: (lambda i: invert_records(records), 0)}, "invert")["ours"]
    finally:
        shutil.rmtree(work)
    row["invert"] = {"median_s": round(statistics.median(inv["times"]), 6), "records": len(records)}
    if "hf" in first:  # tokens and prompt tokens after truncation: the two pipelines must agree exactly
        row["same_counts"] = float(first["ours"] == first["hf"])
    return row


# name -> (function(s) -> the mode's row fields, the peer packages it needs unless no_hf)
MODES = {"train": (bench_train, ["transformers"]), "generate": (bench_generate, ["transformers"]),
         "mc": (bench_mc, ["transformers", "lm_eval"]), "prep": (bench_prep, ["transformers"])}


# -----------------------------------------------------------------------------
# set-up, report, main

def setup(c):
    """The checked config as a namespace, plus what it implies: modes, the torch device and dtype, the model
    shape (args), the GPU's bf16 peak FLOP/s (peak)."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for k in ("batch_size", "grad_accum", "seq_len", "new_tokens", "steps", "mc_limit", "mc_batch_size"):
        need(c[k] >= 1, f"--{k} must be a positive integer, got {c[k]}")
    need(c["warmup"] >= 1, f"--warmup must be at least 1, got {c['warmup']}")
    need(c["threads"] >= 0, f"--threads must be >= 0 (0: torch's default), got {c['threads']}")
    need(c["seq_len"] % 8 == 0, f"--seq_len must be a multiple of 8 (the micro-batch padding), got {c['seq_len']}")
    for k, allowed in {"dtype": DTYPES, "optimizer": ("adamw", "adamw_bf16")}.items():
        need(c[k] in allowed, f"--{k}: invalid choice: {c[k]!r} (choose from {', '.join(allowed)})")
    s = SimpleNamespace(**c, modes=[m.strip() for m in c["mode"].split(",") if m.strip()], dtype_name=c["dtype"])
    for m in [m for m in s.modes if m not in MODES] or ([] if s.modes else [c["mode"]]):
        raise ConfigError(f"unknown mode {m!r}: expected a comma-separated list of {', '.join(MODES)}")
    try:
        s.device, s.dtype = torch.device(c["device"]), DTYPES[c["dtype"]]
    except RuntimeError:
        s.device = None
    need(s.device is not None and s.device.type in ("cpu", "cuda"),
         f"unknown device {c['device']!r}: expected cpu or cuda[:N]")
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
    name = device_name(s.device)
    s.device_name = name
    s.peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if s.dtype == torch.bfloat16 else None
    return s


def print_row(row):
    train = f"  batch {row['batch_size']} x {row['grad_accum']}, seq_len {row['seq_len']}"
    print(f"{row['mode']}  {row['model']}  {row['dtype']}  {row['device']}" + (train if row["mode"] == "train" else ""))
    print(f"  {'':6} {'median s':>10} {row['units']:>24} {'peak GB':>9} {'MFU':>7}")
    for side in ("ours", "hf"):
        if r := row.get(side):
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            print(f"  {side:6} {r['median_s']:>10.4f} {r['per_s']:>24,.1f} {r['peak_mem_gb']:>9.3f} {mfu:>7}")
    if row["ratio"]:
        print(f"  ours / HF: {row['ratio']:.2f}x")
    for k in ("loss_diff", "same_tokens", "max_abs_ll_diff", "same_counts"):
        if k in row:
            print(f"  {k}: {row[k]:.3g}")


def append_row(path, row):
    """Append a JSON line atomically: the old file plus the new row go to a temp file that replaces it."""
    old = Path(path).read_bytes() if Path(path).exists() else b""
    new = (old if not old or old.endswith(b"\n") else old + b"\n") + (dumps(row) + "\n").encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(new))


def main(argv):
    s = setup(load_config(DEFAULTS, argv, source=__file__, usage=__doc__.strip()))
    busy = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # before our own work counts
    if busy is not None and busy + torch.get_num_threads() > (os.cpu_count() or 1) + 0.5:
        print(f"bench.py: warning: a load average of {busy:.1f} on {os.cpu_count()} CPUs competes with "
              f"{torch.get_num_threads()} threads: times are inflated and ratios squeezed", file=sys.stderr)
    for m in s.modes:
        row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": s.device_name,
               "threads": torch.get_num_threads() if s.device.type == "cpu" else None, "torch": torch.__version__,
               "transformers": version("transformers") if find_spec("transformers") else None,
               "command": shlex.join(["python", "bench.py", *argv]), "mode": m, "model": s.model,
               "params": n_params(s.args), "dtype": s.dtype_name, "peak_flops": s.peak,
               **{k: getattr(s, k) for k in ("batch_size", "grad_accum", "seq_len", "steps", "warmup", "compile",
                                             "optimizer", "activation_checkpointing")}}
        try:
            row.update(MODES[m][0](s))
        except torch.cuda.OutOfMemoryError:
            raise DataError(f"{m}: out of memory at batch_size {s.batch_size}: try a smaller batch_size (with a "
                            f"larger grad_accum for the same global batch)") from None
        row["busy_elsewhere"] = busy  # the 1-minute load average when bench.py started: was the machine quiet?
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
