#!/usr/bin/env bash
# The prepared GPU verification (issue #26): what users' runs do on one H100/H200, measured. Random weights, nothing
# downloaded. Two groups, each one command whose checks' time limits add up to at most 540 s (a device command may
# run 600 s), each with its own compiler cache ($GPU_CHECK_CACHE/<group>, default ~/.cache/nanoplw/gpu_check), kept
# for the next run only if no check of the group died or timed out and the script itself ran to its end: a run
# killed mid-compile cannot leave a truncated cache to the next, which starts that group's cache afresh.
#
#   bench/gpu_check.sh --only=7b        # LLaMA-2-7B: the README's command, the fastest setting, HF, a checkpoint
#   bench/gpu_check.sh --only=small     # compile health, the fused optimizer on CUDA, GEMM efficiency, train.py
#   bench/gpu_check.sh --only=compile,hf7b --out=/tmp/rows.jsonl   # checks by name
#   bench/gpu_check.sh --dry            # every check on the CPU at tiny shapes, without time limits
#   bench/gpu_check.sh --limits         # the groups, their checks and time limits
#
# Checks (bench/gpu_check.py; one process each; a check that fails, dies or times out still writes a row):
#   group 7b, under an 80 GB cap (torch.cuda.set_per_process_memory_fraction, also on the 141 GB H200):
#     step7b_readme  train.py's train_step at LLaMA-2-7B's shape with the README's 7B command's settings
#                    (configs/short_plw01.py on one GPU: rows packed to 4096 tokens, bf16 weights + the fused bf16 AdamW,
#                    compiled blocks, every 4th block recomputed), Alpaca-length examples: step time, tokens/s, MFU,
#                    peak allocated and reserved memory, host syncs per step (torch's sync debug mode; 1 expected)
#     step7b_fast    the same without activation checkpointing: the fastest setting the plan expects to fit
#     hf7b           HF transformers' LlamaForCausalLM on the same examples and dtype, the loop users write (padded
#                    micro-batches of 4 rows, fp32 logits), the same optimizer: the baseline
#     save7b         a 7B checkpoint as train.py writes it (torch.distributed.checkpoint, asynchronous, after the disk
#                    check): the training's stall and the write time; then removed
#   group small:
#     compile        compile health on CUDA: graph breaks, recompiles, padded rows and packed rows (FlexAttention), with
#                    and without checkpointing, losses against eager; the attention kernels of a profiled step: any
#                    fused backend (flash, cuDNN, memory-efficient, flex) passes, the math fallback fails
#     optimizer      the fused bf16 AdamW on CUDA against the eager update given the same random bits (in bf16 ulps),
#                    and its in-kernel rounding noise: unbiased
#     gemm           bf16 GEMM efficiency at 7B's projections for 512-8192 tokens (the plan's assumption, measured)
#     train_single   train.py end to end on tests/fixtures/stories260K, one GPU: compile, packed rows, adamw_bf16
#     train_fsdp     torchrun --nproc_per_node=1 train.py --parallel=fsdp with activation checkpointing, compile and
#                    packed rows, checkpointed at half way and at the end; resumed from half way: its weights
#                    against the whole run's
# Rows go to --out (bench/results.jsonl). Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=0
OUT=bench/results.jsonl
ONLY=""
LIMITS=0
for a in "$@"; do
  case $a in
    --dry) DRY=1 ;;
    --out=*) OUT=${a#--out=} ;;
    --only=*) ONLY=${a#--only=} ;;
    --limits) LIMITS=1 ;;
    -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (--help)" >&2; exit 2 ;;
  esac
done

# group check limit (seconds, on the GPU; --dry has none: a busy CPU is slow, not wrong)
CHECKS="7b step7b_readme 150
7b step7b_fast 130
7b hf7b 100
7b save7b 120
small compile 120
small optimizer 60
small gemm 40
small train_single 90
small train_fsdp 180"
if [ "$LIMITS" = 1 ]; then echo "$CHECKS"; exit 0; fi

export GPU_CHECK_DRY=$DRY GPU_CHECK_OUT=$OUT
# --dry on a shared CPU: one thread (two OpenMP threads on two busy cores made a small matmul 700x slower)
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILED=()
CACHE=${GPU_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nanoplw/gpu_check}
declare -A CLEAN  # group -> 1 while none of its checks died or timed out in this run

wanted() {  # by its own name or its group's
  [ -z "$ONLY" ] && return 0
  [[ ",$ONLY," == *",$1,"* || ",$ONLY," == *",$2,"* ]]
}

limit_of() { echo "$CHECKS" | awk -v c="$1" '$2 == c {print $3}'; }
group_of() { echo "$CHECKS" | awk -v c="$1" '$2 == c {print $1}'; }

# a group's compiler cache: kept from a run that ended cleanly (its .complete marker), else started afresh; sets
# CACHE_KEY and CACHE_DIR
use_cache() {
  CACHE_KEY=$1$([ "$DRY" = 1 ] && echo -dry)
  CACHE_DIR="$CACHE/$CACHE_KEY"
  if [ -z "${CLEAN[$CACHE_KEY]:-}" ]; then  # its first use in this run
    [ -f "$CACHE_DIR/.complete" ] || rm -rf "$CACHE_DIR"
    rm -f "$CACHE_DIR/.complete"
    mkdir -p "$CACHE_DIR"
    CLEAN[$CACHE_KEY]=1
  fi
}

# a command with its group's compiler cache, under the check's limit (none with --dry)
limited() {
  local name=$1; shift
  use_cache "$(group_of "$name")"
  if [ "$DRY" = 1 ]; then
    TORCHINDUCTOR_CACHE_DIR="$CACHE_DIR" TRITON_CACHE_DIR="$CACHE_DIR/triton" "$@"
  else
    TORCHINDUCTOR_CACHE_DIR="$CACHE_DIR" TRITON_CACHE_DIR="$CACHE_DIR/triton" timeout -k 10 "$(limit_of "$name")" "$@"
  fi
  local rc=$?
  [ $rc -gt 1 ] && CLEAN[$CACHE_KEY]=0  # it died or timed out, maybe mid-write: the cache is not kept
  return $rc
}

# a python check; a crash or a timeout still leaves a row
check() {
  local name=$1; shift
  wanted "$name" "$(group_of "$name")" || return 0
  echo "== $name (limit $(limit_of "$name") s$([ "$DRY" = 1 ] && echo ', not applied: --dry'))" >&2
  local t0=$SECONDS
  limited "$name" "$PY" bench/gpu_check.py "$@" 2> >(tee "$WORK/$name.err" >&2)
  local rc=$?
  echo "   $name: exit $rc after $((SECONDS - t0)) s" >&2
  if [ $rc -ne 0 ]; then
    FAILED+=("$name")
    # rc 1: the check ran and wrote its row (ok=false); anything else: it died before
    [ $rc -ne 1 ] && "$PY" bench/gpu_check.py failed "$name" "$rc" "$WORK/$name.err" > /dev/null
  fi
}

# train.py runs (a shell function each), then a row from the log and the export
train_check() {
  local name=$1 fn=$2
  wanted "$name" "$(group_of "$name")" || return 0
  echo "== $name (limit $(limit_of "$name") s$([ "$DRY" = 1 ] && echo ', not applied: --dry'))" >&2
  local t0=$SECONDS
  limited "$name" bash -c "$(declare -f "$fn"); $fn" 2> "$WORK/$name.err"
  local rc=$?
  tail -3 "$WORK/$name.err" >&2
  echo "   $name: exit $rc after $((SECONDS - t0)) s" >&2
  if ! "$PY" bench/gpu_check.py train "${name#train_}" "$WORK/$name" "$rc" "$((SECONDS - t0))" \
      $([ "$name" = train_fsdp ] && echo "$WORK/${name}_ref"); then
    FAILED+=("$name")
    "$PY" bench/gpu_check.py failed "$name" "$rc" "$WORK/$name.err" > /dev/null
  fi
}

if [ "$DRY" = 1 ]; then
  export TRAIN_ARGS="configs/tiny_stories.py --device=cpu --dtype=float32 --overwrite=True --batch_size=4
    --global_batch_size=8"
  # train.py's compiled path on the CPU (inductor, ~10 s cold) on padded rows; FSDP eager on packed rows (the
  # first loss, before any update, is the same number on both: tests/test_compile.py compares them)
  export SINGLE_ARGS="--max_iters=2 --compile=True"
  export FSDP_ARGS="--max_iters=4 --compile=False --pack=True --tokens_per_micro_batch=1024"
else
  export TRAIN_ARGS="configs/tiny_stories.py --device=cuda --dtype=bfloat16 --overwrite=True --pack=True
    --tokens_per_micro_batch=4096 --batch_size=16 --global_batch_size=32"
  export SINGLE_ARGS="--max_iters=30 --compile=True --optimizer=adamw_bf16"
  export FSDP_ARGS="--max_iters=10 --compile=True"
fi
export PY WORK

single() { $PY train.py $TRAIN_ARGS $SINGLE_ARGS --out_dir="$WORK/train_single"; }
# FSDP2 on one rank with checkpointing and compile, sharded checkpoints at half way and at the end; then the end's
# removed (its export kept aside as the reference) and the run resumed from half way
fsdp() {
  local n=$(echo "$FSDP_ARGS" | sed 's/.*--max_iters=\([0-9]*\).*/\1/')
  local run=($PY -m torch.distributed.run --standalone --nproc_per_node=1 train.py $TRAIN_ARGS $FSDP_ARGS
             --parallel=fsdp --activation_checkpointing=True --checkpoint_every=2 --decay_lr=False
             --checkpoint_interval=$((n / 2)) --keep_checkpoints=2 --out_dir="$WORK/train_fsdp")
  "${run[@]}" && mkdir -p "$WORK/train_fsdp_ref" && cp "$WORK/train_fsdp/model.safetensors" "$WORK/train_fsdp_ref/" \
    && rm -r "$WORK/train_fsdp/ckpt-$(printf %06d "$n")" && "${run[@]}" --resume=True
}

PY_CHECKS=(step7b_readme step7b_fast hf7b "save7b:$WORK/save7b" compile optimizer gemm)
if [ "$DRY" = 1 ]; then  # one process for them all: on a busy CPU each start-up (torch, transformers) costs seconds
  specs=()
  for spec in "${PY_CHECKS[@]}"; do
    wanted "${spec%%:*}" "$(group_of "${spec%%:*}")" && specs+=("$spec")
  done
  if [ ${#specs[@]} -gt 0 ]; then
    use_cache many
    TORCHINDUCTOR_CACHE_DIR="$CACHE_DIR" TRITON_CACHE_DIR="$CACHE_DIR/triton" \
      "$PY" bench/gpu_check.py many "${specs[@]}" 2> >(tee "$WORK/many.err" >&2)
    rc=$?
    [ $rc -gt 1 ] && CLEAN[$CACHE_KEY]=0 && FAILED+=(many)
    FAILED+=($(sed -n 's/^failed: //p' "$WORK/many.err"))
  fi
else
  for spec in "${PY_CHECKS[@]}"; do
    if [[ $spec == *:* ]]; then check "${spec%%:*}" "${spec%%:*}" "${spec#*:}"; else check "$spec" "$spec"; fi
  done
fi
train_check train_single single
train_check train_fsdp fsdp

for group in "${!CLEAN[@]}"; do  # caches to keep: their groups' checks all ended on their own
  [ "${CLEAN[$group]}" = 1 ] && touch "$CACHE/$group/.complete"
done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]} (rows in $OUT)" >&2
  exit 1
fi
echo "gpu_check: all checks passed (rows in $OUT)" >&2
