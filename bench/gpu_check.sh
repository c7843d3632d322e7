#!/usr/bin/env bash
# The prepared GPU verification of issue #15: about 6 minutes on one H100/H200 (time limits add up to 11),
# random weights, nothing downloaded.
#
#   bench/gpu_check.sh                 # CUDA: every check below; rows appended to bench/results.jsonl
#   bench/gpu_check.sh --dry           # the same code paths on the CPU at tiny shapes (tests/test_compile.py)
#   bench/gpu_check.sh --only=compile,step7b_compiled --out=/tmp/rows.jsonl
#
# Checks (one process each, each under its own time limit; a check that fails or times out still writes a row):
#   compile          model.compile_blocks() on a 4-layer LLaMA-shaped model (bf16): training steps over 12 lengths
#                    and micro-batch sizes 1-8, with and without activation checkpointing; graph breaks, graphs and
#                    recompiles from torch._dynamo's counters; the attention kernels of a profiled step (flash
#                    expected); compiled losses against eager ones
#   step7b_eager     one-GPU full fine-tuning step of LLaMA-2-7B's shape: bf16 weights + AdamWBF16, activation
#   step7b_compiled  checkpointing, micro-batches cut by tokens (data/batch.py split_by_tokens), under an 80 GB cap
#                    (torch.cuda.set_per_process_memory_fraction): step time, tokens/s, MFU, peak memory; the
#                    compiled one (blocks + fused optimizer) also counts graphs; the profile table of one step
#                    goes to profile_7b.txt (eager: profile_7b_eager.txt; --dry: profile_dry*.txt) beside --out
#   train_single     train.py end to end on tests/fixtures/stories260K: one GPU, compile on
#   train_torchrun   torchrun --nproc_per_node=1 ... --parallel=fsdp (one rank: FSDP2 wraps the model and runs its
#                    code path, sharding over one rank; tests/test_train.py covers 2 ranks on the CPU)
#   train_bf16       optimizer=adamw_bf16 (fused update) + tokens_per_micro_batch
# Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=0
OUT=bench/results.jsonl
ONLY=""
for a in "$@"; do
  case $a in
    --dry) DRY=1 ;;
    --out=*) OUT=${a#--out=} ;;
    --only=*) ONLY=${a#--only=} ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (--help)" >&2; exit 2 ;;
  esac
done
export GPU_CHECK_DRY=$DRY GPU_CHECK_OUT=$OUT
# --dry on a shared CPU: one thread (two OpenMP threads on two busy cores made a small matmul 700x slower)
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILED=()

cat > "$WORK/check.py" <<'PYEOF'
import json, math, os, statistics, sys, time
from datetime import datetime, timezone

import numpy as np
import torch

sys.path.insert(0, os.getcwd())
from model import ModelArgs, Transformer
from optim import AdamWBF16
from data.batch import split_by_tokens

DRY = os.environ["GPU_CHECK_DRY"] == "1"
OUT = os.environ["GPU_CHECK_OUT"]
DEV = "cpu" if DRY else "cuda"
DTYPE = torch.float32 if DRY else torch.bfloat16
PEAK = 989e12  # H100/H200 dense bf16
LLAMA2_7B = ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128, hidden_dim=11008,
                      vocab_size=32000, max_seq_len=4096)
MID = ModelArgs(dim=1024, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=128, hidden_dim=2816, vocab_size=32000,
                max_seq_len=2048)
TINY = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64, vocab_size=100,
                 max_seq_len=128)


def row(**kw):
    r = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bench": "gpu_check", "dry": DRY,
         "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__, **kw}
    with open(OUT, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r), flush=True)
    return r


def build(args, seed=0):
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)  # born in the training dtype: a 7B never exists in fp32
    try:
        with torch.device(DEV):
            m = Transformer(args)
    finally:
        torch.set_default_dtype(old)
    return m.train()


def batch(args, B, T, seed, pad=True):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, args.vocab_size, (B, T), generator=g)
    y = idx.roll(-1, 1)
    if pad:  # right padding: rows of different lengths, the first the longest
        for b in range(1, B):
            y[b, int(torch.randint(1, T + 1, (1,), generator=g)):] = -1
    w = torch.where(y >= 0, 1.0, 0.0)
    return idx.to(DEV), y.to(DEV), w.to(DEV)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def reset_counts():
    from torch._dynamo.utils import clear_compilation_metrics, counters
    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()


def counts():
    """graph breaks, graphs and recompiles (a compile of a function already compiled, its guards having failed)
    since reset_counts(), from torch._dynamo's own records"""
    from torch._dynamo.utils import counters, get_compilation_metrics
    ms = get_compilation_metrics()
    per_fn = {}
    for x in ms:
        per_fn[x.co_name] = per_fn.get(x.co_name, 0) + 1
    return {"graph_breaks": sum(counters["graph_break"].values()), "graph_break_reasons": list(counters["graph_break"]),
            "graphs": counters["stats"]["unique_graphs"], "compiles_per_function": per_fn,
            "recompiles": sum(1 for x in ms if x.recompile_reason),
            "recompile_reasons": [x.recompile_reason[:200] for x in ms if x.recompile_reason]}


def profile(fn, path=None, limit=30):
    from torch.profiler import ProfilerActivity, profile as prof
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with prof(activities=acts) as p:
        fn()
        sync()
    ka = p.key_averages()
    key = "self_device_time_total" if DEV == "cuda" else "self_cpu_time_total"
    if path:
        with open(path, "w") as f:
            f.write(ka.table(sort_by=key, row_limit=limit))
    attn = sorted({e.key for e in ka if any(s in e.key.lower() for s in
                                             ("flash", "efficient_attention", "cudnn_attention", "fmha", "sdpa",
                                              "scaled_dot_product"))})
    top = sorted(ka, key=lambda e: -getattr(e, key))[:15]
    table = [{"name": e.key[:100], "count": e.count, "self_ms": round(getattr(e, key) / 1e3, 3)} for e in top]
    return attn, table


def check_compile():
    args = TINY if DRY else MID
    shapes = ([(2, 5), (2, 9), (3, 17), (1, 33), (2, 40), (4, 12)]
              if DRY else [(8, 64), (8, 100), (4, 128), (4, 200), (1, 255), (4, 256), (2, 300), (2, 384), (1, 450),
                           (2, 512), (4, 37), (1, 1000)])
    m = build(args)

    def step(B, T, i):
        idx, y, w = batch(args, B, T, i)
        loss = (m(idx, y) * w).sum() / w.sum()
        loss.backward()
        m.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.time()
    eager = [step(B, T, i) for i, (B, T) in enumerate(shapes)]
    t_eager = time.time() - t0
    reset_counts()
    m.compile_blocks(**({"backend": "aot_eager"} if DRY else {}))  # --dry: dynamo + AOTAutograd, no codegen
    t0 = time.time()
    diffs = []
    for ckpt in (False, True):
        m.activation_checkpointing = ckpt
        for i, (B, T) in enumerate(shapes):
            diffs.append(abs(step(B, T, i) - eager[i]) / abs(eager[i]))
    t_compiled = time.time() - t0
    c = counts()
    m.activation_checkpointing = False
    attn, table = profile(lambda: step(*shapes[-3], 0))
    flash = any("flash" in k.lower() for k in attn)
    tol = 1e-5 if DTYPE == torch.float32 else 2e-2
    ok = c["graph_breaks"] == 0 and c["recompiles"] <= 2 and max(diffs) < tol and (DRY or flash)
    row(check="compile", ok=ok, shapes=len(shapes), lengths=len({T for _, T in shapes}),
        batch_sizes=sorted({B for B, _ in shapes}), activation_checkpointing=[False, True], **c,
        attention_kernels=attn, flash=flash, max_rel_loss_diff=max(diffs), tol=tol, eager_s=round(t_eager, 2),
        compiled_s_incl_compile=round(t_compiled, 2), model=f"{args.n_layers}x{args.dim}")
    return ok


def check_step7b(mode):
    compiled = mode == "compiled"
    args = TINY if DRY else LLAMA2_7B
    cap = 80e9
    if DEV == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        torch.backends.cuda.matmul.allow_tf32 = True
    m = build(args)
    m.activation_checkpointing = True
    params = [p for p in m.parameters()]
    opt = AdamWBF16([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.0},
                     {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=2e-5)
    if compiled:
        reset_counts()
        m.compile_blocks(**({"backend": "aot_eager"} if DRY else {}))
        if not DRY:
            opt.compile()
    # a global batch of 64 sequences, Alpaca-like lengths (mean ~130, up to 512), cut by tokens
    G, budget = (16, 256) if DRY else (64, 8192)
    rng = np.random.default_rng(0)
    max_T = 40 if DRY else 512
    lengths = np.minimum(rng.lognormal(np.log(110 if not DRY else 12), 0.6, G).astype(int) + 2, max_T + 1)
    ids = np.arange(G)
    micro = split_by_tokens(ids, lengths, budget, 1, 8 if DEV == "cuda" else 1)
    batches = []
    for k, mb in enumerate(micro):
        T = int(-(-(lengths[mb].max() - 1) // 8) * 8) if DEV == "cuda" else int(lengths[mb].max() - 1)
        idx, y, w = batch(args, len(mb), T, k, pad=False)
        for r, i in enumerate(mb):
            y[r, int(lengths[i] - 1):] = -1
            w[r, int(lengths[i] - 1):] = 0
        batches.append((idx, y, w))
    W = float(sum(w.sum() for _, _, w in batches))
    tokens = int(sum((lengths - 1)))
    flops = float(sum(m.flops_per_token(int(L - 1)) * (L - 1) for L in lengths))

    def step():
        loss_sum = 0.0
        for idx, y, w in batches:
            loss = (m(idx, y) * w).sum() / W
            loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss_sum)

    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    first_loss = step()  # compiles, in the compiled mode
    sync()
    t_first = time.time() - t0
    times = []
    for _ in range(2 if DRY else 3):
        t0 = time.time()
        step()
        sync()
        times.append(time.time() - t0)
    dt = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 1e9 if DEV == "cuda" else None
    extra = counts() if compiled else {}
    attn, table = profile(step, path=os.path.join(os.path.dirname(os.path.abspath(OUT)),
                                                  f"profile_{'dry' if DRY else '7b'}{'' if compiled else '_eager'}.txt"))
    # compiled: the blocks' graph (+1 if a micro-batch has one row) and the optimizer's (one per parameter rank)
    ok = math.isfinite(first_loss) and (peak is None or peak < cap / 1e9) and (not compiled or (
        extra["graph_breaks"] == 0 and extra["recompiles"] <= 2))
    row(check=f"step7b_{mode}", ok=ok, model="llama2-7b" if not DRY else "tiny", dtype=str(DTYPE),
        optimizer="adamw_bf16" + ("(fused)" if compiled and not DRY else ""), activation_checkpointing=True,
        global_batch=G, tokens_per_micro_batch=budget, micro_steps=len(micro), tokens=tokens,
        padded_tokens=int(sum(i.numel() for i, _, _ in batches)), first_loss=first_loss,
        first_step_s=round(t_first, 2), step_s=round(dt, 3), times_s=[round(t, 3) for t in times],
        tokens_per_s=round(tokens / dt, 1), mfu=round(flops / dt / PEAK, 4) if DEV == "cuda" else None,
        peak_mem_gb=round(peak, 2) if peak else None, mem_cap_gb=cap / 1e9, **extra, attention_kernels=attn,
        profile_top=table)
    return ok


def check_train(name, out_dir, rc, seconds):
    rows = []
    log = os.path.join(out_dir, "log.jsonl")
    if os.path.exists(log):
        rows = [json.loads(l) for l in open(log).read().splitlines()]
    losses = [r["loss"] for r in rows]
    ok = rc == 0 and len(rows) > 0 and all(math.isfinite(x) for x in losses) and (
        DRY or len(losses) < 10 or statistics.mean(losses[-3:]) < statistics.mean(losses[:3]))
    exported = os.path.exists(os.path.join(out_dir, "model.safetensors"))
    row(check=f"train_{name}", ok=ok and exported, rc=rc, wall_s=seconds, steps=len(rows),
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        tokens_per_s=rows[-1].get("tokens_per_s") if rows else None, mfu=rows[-1].get("mfu") if rows else None,
        exported=exported)
    return ok and exported


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "compile":
        ok = check_compile()
    elif what.startswith("step7b_"):
        ok = check_step7b(what.split("_", 1)[1])
    elif what == "train":
        ok = check_train(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif what == "failed":  # a check that died or timed out: a row saying so
        row(check=sys.argv[2], ok=False, rc=int(sys.argv[3]), timed_out=sys.argv[3] in ("124", "137"),
            tail=open(sys.argv[4], errors="replace").read()[-2000:])
        ok = True
    else:
        raise SystemExit(f"unknown check {what}")
    sys.exit(0 if ok else 1)
PYEOF

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# run a python check under a time limit; a crash or a timeout still leaves a row
check() {
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  echo "== $name (limit ${limit}s)" >&2
  timeout -k 10 "$limit" "$PY" "$WORK/check.py" "$@" 2> >(tee "$WORK/$name.err" >&2)
  local rc=$?
  if [ $rc -ne 0 ]; then
    FAILED+=("$name")
    # rc 1: the check ran and wrote its row (ok=false); anything else: it died before
    [ $rc -ne 1 ] && "$PY" "$WORK/check.py" failed "$name" "$rc" "$WORK/$name.err" > /dev/null
  fi
}

# train.py end to end, then a row from its log
train() {
  local name=$1 limit=$2; shift 2
  wanted "train_$name" || return 0
  echo "== train_$name (limit ${limit}s)" >&2
  local out="$WORK/run_$name" t0=$SECONDS
  timeout -k 10 "$limit" "$@" --out_dir="$out" 2> "$WORK/train_$name.err"
  local rc=$?
  tail -3 "$WORK/train_$name.err" >&2
  if ! "$PY" "$WORK/check.py" train "$name" "$out" "$rc" "$((SECONDS - t0))"; then
    FAILED+=("train_$name")
    "$PY" "$WORK/check.py" failed "train_$name" "$rc" "$WORK/train_$name.err" > /dev/null
  fi
}

if [ "$DRY" = 1 ]; then
  TRAIN=(configs/tiny_stories.py --max_iters=2 --batch_size=4 --global_batch_size=8 --device=cpu
         --dtype=float32 --compile=False --overwrite=True)
  BF16=(--optimizer=adamw_bf16 --dtype=bfloat16 --tokens_per_micro_batch=1024 --max_iters=1)
  SINGLE=(--compile=True)  # train.py's compiled path on the CPU (inductor, ~20 s cold); torchrun's run stays eager
  L_COMPILE=120; L_STEP=120; L_TRAIN=120
else
  TRAIN=(configs/tiny_stories.py --max_iters=30 --batch_size=16 --global_batch_size=32 --device=cuda
         --dtype=bfloat16 --compile=True --overwrite=True)
  BF16=(--optimizer=adamw_bf16 --tokens_per_micro_batch=4096)
  SINGLE=()
  L_COMPILE=120; L_STEP=90; L_STEP_COMPILED=180; L_TRAIN=90  # expected ~6 min in all, at most 11
fi
L_STEP_COMPILED=${L_STEP_COMPILED:-$L_STEP}

check compile "$L_COMPILE" compile
check step7b_eager "$L_STEP" step7b_eager
check step7b_compiled "$L_STEP_COMPILED" step7b_compiled
train single "$L_TRAIN" "$PY" train.py "${TRAIN[@]}" "${SINGLE[@]}"
train torchrun "$L_TRAIN" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 train.py "${TRAIN[@]}" \
  --parallel=fsdp
train bf16 "$L_TRAIN" "$PY" train.py "${TRAIN[@]}" "${BF16[@]}"

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]} (rows in $OUT)" >&2
  exit 1
fi
echo "gpu_check: all checks passed (rows in $OUT)" >&2
