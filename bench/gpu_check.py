"""The checks of bench/gpu_check.sh, one per process: python bench/gpu_check.py CHECK [arguments].

Each appends one JSON row to $GPU_CHECK_OUT (bench/results.jsonl's format: date, device, torch, the check's figures and
"ok") and exits 0 when ok, 1 when not. GPU_CHECK_DRY=1 runs the same code on the CPU at tiny shapes. Random weights,
nothing downloaded; train.py's own functions wherever train.py has one (train_step, build_optimizer, checkpoint).
"""
import json
import math
import os
import shutil
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bench  # noqa: E402
import train  # noqa: E402
from config import load_config  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from optim import AdamWBF16  # noqa: E402

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
OUT = os.environ.get("GPU_CHECK_OUT", str(ROOT / "bench" / "results.jsonl"))
DEV = "cpu" if DRY else "cuda"
CAP = 80e9  # the 80 GB GPUs' memory, imposed on the 141 GB H200 too (torch.cuda.set_per_process_memory_fraction)
LLAMA2_7B = bench.load_shape("llama2-7b")[1]
MID = ModelArgs(dim=1024, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=128, hidden_dim=2816, vocab_size=32000,
                max_seq_len=2048)
TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128, vocab_size=512,
                 max_seq_len=512)
BACKEND = {"backend": "aot_eager"} if DRY else {}  # --dry: dynamo + AOTAutograd, no code generation
# SDPA's kernels by name in a profile (ops and CUDA kernels): any fused one passes, the math fallback alone fails
FUSED_ATTENTION = ("flash", "cudnn", "efficient", "mem_eff", "fmha")


def row(**kw):
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bench": "gpu_check", "dry": DRY,
         "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__, **kw}
    with open(OUT, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r), flush=True)
    return r["ok"]


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def cap_memory():
    """Allocations beyond CAP fail as they would on an 80 GB GPU; the peaks are measured from here"""
    if DEV == "cuda":
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP / torch.cuda.get_device_properties(0).total_memory))
        torch.cuda.reset_peak_memory_stats()


def memory():
    if DEV != "cuda":
        return {}
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2), "cap_gb": CAP / 1e9}


def build(args, dtype, seed=0):
    """Our model, born on the device in dtype (a 7B never exists in fp32), HF's random initialisation"""
    torch.manual_seed(seed)
    return bench.build(lambda: Transformer(args), DEV, dtype).train()


def compile_counts(reset=False):
    """graph breaks, graphs and recompiles since the last reset, from torch._dynamo's own records"""
    from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics
    if reset:
        torch._dynamo.reset()
        counters.clear()
        clear_compilation_metrics()
        return None
    ms = get_compilation_metrics()
    return {"graph_breaks": sum(counters["graph_break"].values()), "graph_break_reasons": list(counters["graph_break"]),
            "graphs": counters["stats"]["unique_graphs"], "recompiles": sum(1 for m in ms if m.recompile_reason),
            "recompile_reasons": [m.recompile_reason[:200] for m in ms if m.recompile_reason]}


def attention_kernels(fn):
    """the attention ops and kernels one call of fn runs (names from the profiler): (names, a fused SDPA kernel among
    them, SDPA's math fallback among them)"""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])) as p:
        fn()
        sync()
    names = sorted({e.key for e in p.key_averages() if any(
        k in e.key.lower() for k in ("attention", "flash", "fmha", "cudnn", "flex", "sdpa", "triton_tem"))})
    return (names, any(k in n.lower() for n in names for k in FUSED_ATTENTION),
            any("attention_math" in n.lower() for n in names))


# -----------------------------------------------------------------------------
# the 7B steps: train.py's train_step on random weights and random tokens at Stanford Alpaca's lengths

def alpaca_data(n, vocab, seed):
    """n examples at Alpaca lengths (bench.py's sampler), random tokens, in prepare_dataset's layout"""
    pairs = np.array(bench.alpaca_lengths(n, 512, torch.Generator().manual_seed(seed)))
    lengths = pairs.sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.random.default_rng(seed).integers(3, vocab, int(offsets[-1])).astype(np.int32)
    tokens[offsets[:-1]] = 1
    pos = np.arange(len(tokens)) - np.repeat(offsets[:-1], lengths)
    roles = (pos >= np.repeat(pairs[:, 0], lengths)).astype(np.uint8)
    return {"tokens": tokens, "roles": roles, "offsets": offsets}


def run_state(args, overrides, steps):
    """train.py's run dict (what train_step reads) for the README's 7B command plus overrides, one GPU, bf16 weights"""
    argv = bench.README_7B + [f"--{k}={v}" for k, v in overrides.items()]
    if DRY:  # the same settings at a CPU's scale
        argv += ["--batch_size=4", "--gradient_accumulation_steps=4", "--global_batch_size=16",
                 "--tokens_per_micro_batch=512"]
    c = load_config(train.DEFAULTS, argv, ignore=("sweep_",))
    model = build(args, torch.bfloat16)
    model.activation_checkpointing, model.checkpoint_every = c["activation_checkpointing"], c["checkpoint_every"]
    opt = train.build_optimizer(c, model, DEV, None, None, 0)
    G, accum = train.global_batch(c, 1)
    data = alpaca_data(G * steps, args.vocab_size, 0)
    return dict(cfg=c, raw_model=model, opt=opt, dev=DEV, rank=0, world=1, fsdp=False, G=G, accum=accum, n=G * steps,
                train_data=data, lengths=np.diff(data["offsets"]), total=steps, warmup=0, base=None,
                params=[p for p in model.parameters() if p.requires_grad])


def check_step7b(name, overrides):
    """One-GPU LLaMA-2-7B steps exactly as train.py takes them (compiled blocks, the fused bf16 AdamW): step time,
    tokens/s, MFU, peak allocated and reserved memory under the 80 GB cap, host syncs per step"""
    args, steps = (TINY, 3) if DRY else (LLAMA2_7B, 5)
    cap_memory()
    host_batch = train.host_batch
    try:
        run = run_state(args, overrides, steps)
        model = run["raw_model"].compile_blocks(**BACKEND)
        if not DRY:
            run["opt"].compile()
        pad = 1 if DRY else 8
        times, syncs = [], bench.HostSyncs(DEV)
        host_batch = train.host_batch

        def collated_on_the_host(*a, **kw):
            with syncs.paused():
                return host_batch(*a, **kw)
        train.host_batch = collated_on_the_host  # collating on the host is not device work
        for it in range(steps):
            counted = it == steps - 1  # the last step counts its host syncs
            if counted and DRY:  # the CPU's counter (a dispatch mode) cannot run inside compiled code: eager blocks
                compiled = [layer.compiled for layer in model.layers]
                for layer in model.layers:
                    layer.compiled = None
            sync()
            t0 = time.perf_counter()
            with syncs if counted else nullcontext():
                s = train.train_step(run, model, it, nullcontext(), pad)
            sync()
            times.append(time.perf_counter() - t0)
        if DRY:
            for layer, fn in zip(model.layers, compiled):
                layer.compiled = fn
    except torch.cuda.OutOfMemoryError as e:
        return row(check=name, ok=False, oom=True, error=str(e)[:300], settings=overrides, **memory())
    finally:
        train.host_batch = host_batch
    lengths = run["lengths"]
    timed = range(1, steps - 1)  # the first step compiles; the last counts syncs (slower under the debug mode)
    per_step = [train.step_examples(it, run["n"], run["G"], run["cfg"]["seed"]) for it in timed]
    T = [(lengths[ids] - 1).astype(np.float64) for ids in per_step]
    f0 = run["raw_model"].flops_per_token(0)
    f1 = run["raw_model"].flops_per_token(1) - f0
    flops = [float(f0 * t.sum() + f1 * (t * t).sum()) for t in T]
    dt = [times[i] for i in timed]
    peak = next((v for k, v in bench.PEAK_BF16.items() if DEV == "cuda" and k in torch.cuda.get_device_name()), None)
    c = run["cfg"]
    return row(check=name, ok=math.isfinite(s["gnorm"]) and syncs.count == 1, settings=overrides,
               model="llama2-7b" if not DRY else "tiny", pack=c["pack"], tokens_per_micro_batch=c["tokens_per_micro_batch"],
               activation_checkpointing=c["activation_checkpointing"], checkpoint_every=c["checkpoint_every"],
               global_batch=run["G"], micro_steps=len(s["micro"]), tokens_per_step=statistics.mean(t.sum() for t in T),
               first_step_s=round(times[0], 2), step_s=round(statistics.median(dt), 3), times_s=[round(t, 3) for t in dt],
               tokens_per_s=round(statistics.median(t.sum() / d for t, d in zip(T, dt)), 1),
               mfu=round(statistics.median(f / d for f, d in zip(flops, dt)) / peak, 4) if peak else None,
               host_syncs_per_step=syncs.count, host_sync_calls=syncs.calls[:5], loss=s["stats"][0] / s["W"],
               **memory(), **compile_counts())


def check_hf7b():
    """HF transformers' LLaMA on the same step's examples, the loop a user writes: batch_size padded rows per
    micro-step, fp32 logits, F.cross_entropy, the same fused bf16 AdamW; bf16 weights, sdpa attention"""
    import torch.nn.functional as F
    import transformers
    from checkpoint import hf_config
    from data.batch import collate, split_micro_batches, step_examples
    args, steps = (TINY, 3) if DRY else (LLAMA2_7B, 3)
    cap_memory()
    c = load_config(train.DEFAULTS, bench.README_7B + (["--batch_size=4", "--gradient_accumulation_steps=4",
                                                         "--global_batch_size=16"] * DRY), ignore=("sweep_",))
    G, accum = train.global_batch({**c, "tokens_per_micro_batch": 0}, 1)  # HF's step: batch_size rows x accum
    data = alpaca_data(G * steps, args.vocab_size, 0)
    lengths = np.diff(data["offsets"])
    cfg = {k: v for k, v in hf_config(args, torch.bfloat16).items() if k not in ("architectures", "torch_dtype")}
    try:
        torch.manual_seed(0)
        hf = bench.build(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="sdpa")),
                         DEV, torch.bfloat16).train()
        opt = AdamWBF16(hf.parameters(), lr=2e-5)
        if not DRY:
            opt.compile()
        times, T = [], []
        for it in range(steps):
            ids = step_examples(it, G * steps, G, c["seed"])
            micro = [[t.to(DEV) for t in collate(data, mb, 0.1, 8)[:3]]
                     for mb in split_micro_batches(ids, lengths, c["batch_size"], accum)]
            W = sum(float(w.sum()) for _, _, w in micro)
            sync()
            t0 = time.perf_counter()
            for x, y, w in micro:
                logits = hf(input_ids=x, use_cache=False).logits                              # (B, T, V)
                ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
                ((ce.view_as(w) * w).sum() / W).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t0)
            T.append((lengths[ids] - 1).astype(np.float64))
    except torch.cuda.OutOfMemoryError as e:
        return row(check="hf7b", ok=False, oom=True, error=str(e)[:300], **memory())
    with torch.device("meta"):
        meta = Transformer(args)
    f0, f1 = meta.flops_per_token(0), meta.flops_per_token(1) - meta.flops_per_token(0)
    dt, T = times[1:], T[1:]
    peak = next((v for k, v in bench.PEAK_BF16.items() if DEV == "cuda" and k in torch.cuda.get_device_name()), None)
    return row(check="hf7b", ok=all(map(math.isfinite, dt)), transformers=transformers.__version__,
               model="llama2-7b" if not DRY else "tiny", global_batch=G, micro_steps=accum,
               step_s=round(statistics.median(dt), 3), times_s=[round(t, 3) for t in dt],
               tokens_per_s=round(statistics.median(t.sum() / d for t, d in zip(T, dt)), 1),
               mfu=round(statistics.median(float(f0 * t.sum() + f1 * (t * t).sum()) / d for t, d in zip(T, dt)) / peak, 4)
               if peak else None, **memory())


def check_save7b(out_dir):
    """A 7B checkpoint as train.py writes it (checkpoint.checkpoint: DCP, asynchronous, the disk checked first): the
    training's stall (the copy to host memory) and the whole write, then removed"""
    from checkpoint import checkpoint, finish_checkpoint, state_bytes, training_state
    from util import DataError
    args = TINY if DRY else LLAMA2_7B
    run = run_state(args, {"out_dir": out_dir}, 1)
    run.update(master=True, fingerprint="gpu_check", tok_path=ROOT / "tests" / "fixtures" / "stories260K" / "tokenizer.model")
    run["cfg"]["init_from"] = ""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    size = state_bytes(training_state(run["raw_model"], run["opt"], False))  # also creates the optimizer's state
    try:
        sync()
        t0 = time.perf_counter()
        path = checkpoint(run, 1)
        stall = time.perf_counter() - t0
        finish_checkpoint(run, wait=True)
        total = time.perf_counter() - t0
    except DataError as e:  # the disk check refused it: that is the finding
        return row(check="save7b", ok=False, refused=str(e), size_gb=round(size / 1e9, 2))
    written = sum(f.stat().st_size for f in path.iterdir())
    shutil.rmtree(path)
    return row(check="save7b", ok=written >= size, size_gb=round(size / 1e9, 2), written_gb=round(written / 1e9, 2),
               stall_s=round(stall, 2), write_s=round(total, 2), gb_per_s=round(written / 1e9 / total, 2))


# -----------------------------------------------------------------------------
# the small checks: compile health, the fused optimizer's rounding, GEMM efficiency, train.py end to end

def check_compile():
    """model.compile_blocks() on a 4-layer LLaMA-shaped model (bf16): padded micro-batches over 12 lengths and sizes
    1-8 with and without activation checkpointing, then packed rows (FlexAttention on CUDA): graph breaks, graphs,
    recompiles, the attention kernels of a profiled step (any fused one; the math fallback fails), losses against
    eager"""
    args, dtype = (TINY, torch.float32) if DRY else (MID, torch.bfloat16)
    shapes = ([(2, 5), (2, 9), (3, 17), (1, 33), (2, 40), (4, 12)] if DRY else
              [(8, 64), (8, 100), (4, 128), (4, 200), (1, 255), (4, 256), (2, 300), (2, 384), (1, 450), (2, 512),
               (4, 37), (1, 1000)])
    rows = ([[5, 9, 17], [33, 2, 40], [12, 7, 3, 30]] if DRY else
            [[300, 200, 512, 90], [1000, 24, 700], [64] * 30, [512, 512, 333, 100, 9]])
    eager, m = build(args, dtype), build(args, dtype)
    eager.flex = False  # the reference: SDPA with the dense mask

    def step(model, inputs, seed):
        g = torch.Generator().manual_seed(seed)
        if isinstance(inputs, tuple):  # (B, T): right-padded rows
            B, T = inputs
            idx = torch.randint(0, args.vocab_size, (B, T), generator=g).to(DEV)
            y = idx.roll(-1, 1)
            for b in range(1, B):
                y[b, int(torch.randint(1, T + 1, (1,), generator=g)):] = -1
            kw = {}
        else:  # a packed row of examples of these lengths
            T = sum(inputs)
            idx = torch.randint(0, args.vocab_size, (1, T), generator=g).to(DEV)
            y = idx.roll(-1, 1)
            kw = dict(input_pos=torch.cat([torch.arange(L) for L in inputs])[None].to(DEV),
                      doc=torch.cat([torch.full((L,), i) for i, L in enumerate(inputs)])[None].to(DEV))
        w = (y >= 0).float()
        loss = (model(idx, y, **kw) * w).sum() / w.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    ref = [step(eager, x, i) for i, x in enumerate(shapes + rows)]
    compile_counts(reset=True)
    m.compile_blocks(**BACKEND)
    diffs = []
    for ckpt in (False, True):
        m.activation_checkpointing = ckpt
        for i, x in enumerate(shapes + rows):
            diffs.append(abs(step(m, x, i) - ref[i]) / abs(ref[i]))
    counts = compile_counts()
    m.activation_checkpointing = False
    padded_kernels, padded_fused, padded_math = attention_kernels(lambda: step(m, shapes[-3], 0))
    packed_kernels, _, packed_math = attention_kernels(lambda: step(m, rows[0], 0))
    # packed rows: FlexAttention (its Triton template kernel, whatever its name) when doc_mask makes a BlockMask
    flex = type(m.doc_mask(torch.zeros(1, 256, dtype=torch.long, device=DEV))).__name__ == "BlockMask"
    packed_fused = flex and not packed_math
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    ok = (counts["graph_breaks"] == 0 and counts["recompiles"] <= 4 and max(diffs) < tol and
          (DRY or padded_fused and not padded_math and packed_fused))
    return row(check="compile", ok=ok, model=f"{args.n_layers}x{args.dim}", shapes=len(shapes), packed_rows=len(rows),
               activation_checkpointing=[False, True], **counts, max_rel_loss_diff=max(diffs), tol=tol,
               padded_attention_kernels=padded_kernels, packed_attention_kernels=packed_kernels,
               fused_attention=[padded_fused, packed_fused], math_fallback=[padded_math, packed_math],
               packed_flex_attention=flex)


def check_optimizer():
    """The fused bf16 AdamW (one compiled kernel per parameter) against the eager update given the same random bits
    (bit for bit on the CPU; a compiled kernel may contract to FMA on a GPU: counted in bf16 ulps), and the rounding
    noise drawn in the kernel: unbiased"""
    import optim
    if DRY:  # no code generation on a busy CPU
        optim._compiled_update = torch.compile(optim.adamw_bf16_update, dynamic=True, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    shapes = [(4096, 1024), (1024,), (1000, 7), (32000, 64)] if not DRY else [(64, 32), (32,), (100, 7)]
    w0 = [(torch.randn(*s, generator=g) * 0.05).bfloat16().to(DEV) for s in shapes]
    grads = [[(torch.randn(*s, generator=g) * 10 ** -k).bfloat16().to(DEV) for s in shapes] for k in range(4)]

    def run(fused):
        ps = [torch.nn.Parameter(w.clone()) for w in w0]
        opt = AdamWBF16([{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}], lr=1e-2,
                        fused=fused)
        opt.noise_from_torch = True
        torch.manual_seed(5)
        for k, gr in enumerate(grads):
            for p, x in zip(ps, gr):
                p.grad = x.clone()
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (k + 1) / 4
            opt.step()
        return [t.float() for p in ps for t in (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]

    eager, fused = run(False), run(True)
    ulp = [((a - b).abs() / (a.abs().clamp(min=1e-30) * 2 ** -7)).max().item() for a, b in zip(eager, fused)]
    differ = sum(int((a != b).sum()) for a, b in zip(eager, fused)) / sum(a.numel() for a in eager)
    # in-kernel noise: from w = 1, g = 1, w becomes 1 - lr in fp32; rounded up as often as the distance says
    n = 1 << 20 if not DRY else 20000
    p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16, device=DEV))
    opt = AdamWBF16([p], lr=1e-3).compile()
    p.grad = torch.ones_like(p)
    opt.step()
    exact = torch.tensor([1 - 1e-3 / (1 + 1e-8)])
    lo = (exact.view(torch.int32) & -65536).view(torch.float32)                     # its bf16 neighbours
    hi = torch.nextafter(lo.bfloat16(), torch.tensor([2.0], dtype=torch.bfloat16)).float()
    exact, lo, hi = exact.item(), lo.item(), hi.item()
    p_up = (exact - lo) / (hi - lo)
    up = (p.detach().float() == hi).float().mean().item()
    unbiased = bool(((p.float() == lo) | (p.float() == hi)).all()) and abs(up - p_up) <= 5 * (p_up * (1 - p_up) / n) ** .5
    return row(check="optimizer", ok=max(ulp) <= 1.0 and differ <= 1e-3 and unbiased, bit_exact=differ == 0,
               fraction_differing=differ, max_ulps=max(ulp), in_kernel_noise_p_up=up, expected_p_up=p_up)


def check_gemm():
    """bf16 GEMM throughput at LLaMA-2-7B's projections for M tokens: the efficiency bench.py's plan assumes
    (GEMM_MAX * M / (M + GEMM_HALF)), measured, and the two constants fitted to it"""
    dims = [(4096, 11008), (11008, 4096), (4096, 4096)] if not DRY else [(64, 128), (128, 64)]
    Ms = [512, 1024, 2048, 4096, 8192] if not DRY else [16, 64]
    dtype = torch.bfloat16 if not DRY else torch.float32
    peak = next((v for k, v in bench.PEAK_BF16.items() if DEV == "cuda" and k in torch.cuda.get_device_name()), None)
    eff = {}
    for M in Ms:
        flops, secs = 0.0, 0.0
        for K, N in dims:
            a, b = torch.randn(M, K, device=DEV, dtype=dtype), torch.randn(K, N, device=DEV, dtype=dtype)
            for _ in range(3):
                a @ b
            sync()
            t0 = time.perf_counter()
            for _ in range(20):
                a @ b
            sync()
            secs += (time.perf_counter() - t0) / 20
            flops += 2 * M * K * N
        eff[M] = flops / secs / peak if peak else flops / secs
    # 1 / eff = 1 / GEMM_MAX + (GEMM_HALF / GEMM_MAX) / M: a line in 1 / M
    slope, icpt = np.polyfit([1 / M for M in Ms], [1 / e for e in eff.values()], 1)
    return row(check="gemm", ok=all(e > 0 for e in eff.values()), efficiency={str(M): round(e, 4) for M, e in eff.items()},
               fitted_gemm_max=round(1 / icpt, 4) if peak else None, fitted_gemm_half=round(slope / icpt, 1) if peak else None,
               assumed=[bench.GEMM_MAX, bench.GEMM_HALF])


def check_train(name, out_dir, rc, seconds, resumed_from=""):
    """a row from train.py's log and output: rc, steps, losses, tokens/s, MFU, the export; with resumed_from (the
    uninterrupted run's out_dir) whether the resumed run's weights equal it"""
    from safetensors.torch import load_file
    log = Path(out_dir) / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    losses = [r["loss"] for r in rows]
    exported = (Path(out_dir) / "model.safetensors").exists()
    ok = rc == 0 and exported and rows and all(map(math.isfinite, losses)) and (
        DRY or len(losses) < 10 or statistics.mean(losses[-3:]) < statistics.mean(losses[:3]))
    extra = {}
    if resumed_from and exported:
        a, b = load_file(Path(resumed_from) / "model.safetensors"), load_file(Path(out_dir) / "model.safetensors")
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        extra = {"resume_bit_exact": diff == 0, "resume_max_abs_diff": diff}
        ok = ok and diff <= 1e-3  # bit for bit on the CPU (tests); a GPU's atomics may reorder sums
    return row(check=f"train_{name}", ok=bool(ok), rc=rc, wall_s=seconds, steps=len(rows),
               first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
               tokens_per_s=rows[-1].get("tokens_per_s") if rows else None, mfu=rows[-1].get("mfu") if rows else None,
               padding=rows[-1].get("padding") if rows else None, exported=exported, **extra)


def check_failed(name, rc, err_file):
    """a check that died or ran out of time: a row saying so, with the tail of its output"""
    tail = Path(err_file).read_text(errors="replace")[-2000:] if Path(err_file).exists() else ""
    return row(check=name, ok=False, rc=rc, timed_out=rc in (124, 137), tail=tail) or True


CHECKS = {"step7b_readme": lambda: check_step7b("step7b_readme", {}),
          "step7b_fast": lambda: check_step7b("step7b_fast", {"activation_checkpointing": False}),
          "hf7b": check_hf7b, "save7b": check_save7b, "compile": check_compile, "optimizer": check_optimizer,
          "gemm": check_gemm, "train": check_train, "failed": check_failed}


def run_many(specs):
    """--dry: checks (name or name:argument) one after another in this process, one start-up instead of one each; a
    check that raises gets a row saying so. The failed ones' names go to stderr."""
    import traceback
    failed = []
    for spec in specs:
        name, _, arg = spec.partition(":")
        print(f"== {name} (--dry)", file=sys.stderr, flush=True)
        try:
            ok = CHECKS[name](*([arg] if arg else []))
        except Exception:
            ok = row(check=name, ok=False, error=traceback.format_exc()[-2000:])
        if not ok:
            failed.append(name)
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    return not failed


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "many":
        sys.exit(0 if run_many(rest) else 1)
    if what not in CHECKS:
        raise SystemExit(f"gpu_check.py: unknown check {what!r} (one of {', '.join(CHECKS)})")
    if what == "train":
        rest = [rest[0], rest[1], int(rest[2]), float(rest[3]), *rest[4:]]
    elif what == "failed":
        rest = [rest[0], int(rest[1]), rest[2]]
    sys.exit(0 if CHECKS[what](*rest) else 1)
