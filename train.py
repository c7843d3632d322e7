"""
Supervised instruction fine-tuning of a LLaMA with a prompt loss weight (PLW).

    python train.py configs/tiny_stories.py                        # CPU quick start, about a minute
    python train.py configs/short_plw01.py --prompt_loss_weight=0.05
    torchrun --standalone --nproc_per_node=8 train.py configs/short_plw01.py          # DDP
    torchrun --standalone --nproc_per_node=8 train.py configs/short_plw01.py --parallel=fsdp

The loss of one optimizer step over a global batch B (all micro-batches and all ranks) is

    loss = sum_{t in B} w_t * CE_t / sum_{t in B} w_t,    w_t = PLW (prompt target), 1 (completion target), 0 (padding)

Every rank knows the whole global batch, so sum w_t is computed up front from the data, and each micro-batch
backpropagates its own sum w*CE divided by that global total: the update is the same however B is split
(micro-batch size, accumulation steps, ranks). PLW=0 is Stanford Alpaca's prompt masking, PLW=1 plain LM loss.

Config: the globals below are the defaults (the paper's recipe); config files (plain Python assignments, several
stack in order) and --key=value arguments override them, in that order. Names starting with sweep_ in a config
file are for sweep.py and ignored here.
"""
import ast
import builtins
import difflib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# default config: Stanford Alpaca's recipe, which the paper used (LLaMA-2-7B, 3 epochs, global batch 128)
out_dir = "out"
init_from = ""                  # an HF LLaMA directory: config.json + model.safetensors (or sharded)
tokenizer = ""                  # a sentencepiece tokenizer.model; "" = the one in init_from
dataset = "alpaca"              # alpaca | alpaca_short | alpaca_cleaned | alpaca_cleaned_short | path to a JSON/JSONL file
prompt_loss_weight = 0.0        # PLW: the weight of prompt tokens in the loss
max_seq_len = 512               # examples are truncated to this many tokens (BOS included), as Stanford did
val_size = 0                    # examples held out (fixed by seed) for a validation loss; 0 trains on all
batch_size = 4                  # micro-batch size per process
gradient_accumulation_steps = 32  # global batch = batch_size * gradient_accumulation_steps * world size
epochs = 3.0                    # training length in epochs (a partial last global batch of an epoch is dropped)
max_iters = 0                   # > 0: train this many optimizer steps instead of `epochs`
learning_rate = 2e-5
min_lr = 0.0                    # cosine decay ends here
warmup_iters = -1               # linear warmup steps; -1 = ceil(warmup_ratio * total steps)
warmup_ratio = 0.03
decay_lr = True                 # cosine decay after warmup; False = constant
weight_decay = 0.0              # AdamW decoupled weight decay (not applied to norm weights)
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0                 # max global gradient norm; 0 = off
dropout = 0.0                   # attention + residual dropout, one of the paper's alternative regularizers
label_smoothing = 0.0           # applied inside the same per-token weighting
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # float32 | bfloat16 (autocast, fp32 master weights)
compile = torch.cuda.is_available()  # torch.compile the model
parallel = "ddp"                # under torchrun: ddp (replicate) | fsdp (FSDP2 fully_shard: shard params, grads, state)
checkpoint_interval = 0         # save a resumable checkpoint every N steps (0: only at the end)
keep_checkpoints = 1            # how many step checkpoints to keep in out_dir
resume = False                  # continue the run in out_dir from its last checkpoint
overwrite = False               # allow starting a new run in an out_dir that holds another run
log_interval = 1                # log every N steps (1 is needed for the loss RSD analysis)
eval_interval = 0               # validation loss every N steps (needs val_size > 0); 0 = only at the end
on_nonfinite = "stop"           # a NaN/inf loss or gradient: stop (saving the last good state) | skip the step
activation_checkpointing = False  # recompute each block's activations in the backward pass: less memory
optimizer = "adamw"             # adamw: fp32 weights and AdamW state | adamw_bf16: bf16 weights, gradients and
                                # state, fp32 update math, stochastic rounding (7B on one 80 GB GPU; see AdamWBF16)
# -----------------------------------------------------------------------------
CONFIG_KEYS = [k for k, v in list(globals().items()) if not k.startswith("_") and isinstance(v, (bool, int, float, str))
               and k not in ("CONFIG_KEYS",)]
DEFAULTS = {k: globals()[k] for k in CONFIG_KEYS}
# keys that may differ when resuming: they do not change what is computed (the micro-batch split of the same
# global batch gives the same update; see the module docstring)
RESUMABLE_CHANGES = {"resume", "overwrite", "log_interval", "checkpoint_interval", "keep_checkpoints", "compile",
                     "eval_interval", "batch_size", "gradient_accumulation_steps", "device", "parallel",
                     "activation_checkpointing"}


class ConfigError(ValueError):
    pass


def load_config(argv, defaults=DEFAULTS):
    """[config.py ...] [--key=value ...] -> the resolved config dict. Unknown keys, wrong types, bad values refused."""
    cfg = dict(defaults)

    def assign(key, value, where):
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(f"unknown config key {key!r} in {where}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        want = type(defaults[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ConfigError(f"{key} must be a {want.__name__}, got {value!r} ({type(value).__name__}) in {where}")
        cfg[key] = value

    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"expected --key=value, got {arg!r}")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --out_dir=out/run1
            if isinstance(defaults.get(key), str) and not isinstance(value, str):
                value = text  # --tokenizer=123 stays a string
            assign(key, value, arg)
        else:
            path = Path(arg)
            if not path.is_file():
                raise ConfigError(f"config file not found: {arg}")
            scope = {}
            try:
                exec(builtins.compile(path.read_text(), str(path), "exec"), {}, scope)
            except Exception as e:  # a config file is user input: report its error in one line
                raise ConfigError(f"error in config file {arg}: {type(e).__name__}: {e}") from None
            for key, value in scope.items():
                # sweep_* keys configure sweep.py (the PLW grid, the evaluations), which reads the same file
                if not key.startswith(("_", "sweep_")) and not callable(value) and not isinstance(value, type(sys)):
                    assign(key, value, arg)
    check_config(cfg)
    return cfg


def check_config(c):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    need(math.isfinite(c["prompt_loss_weight"]) and c["prompt_loss_weight"] >= 0,
         f"prompt_loss_weight must be >= 0, got {c['prompt_loss_weight']}")
    for k in ("batch_size", "gradient_accumulation_steps", "log_interval", "keep_checkpoints"):
        need(c[k] >= 1, f"{k} must be >= 1, got {c[k]}")
    for k in ("max_iters", "checkpoint_interval", "eval_interval", "val_size"):
        need(c[k] >= 0, f"{k} must be >= 0, got {c[k]}")
    need(c["max_iters"] > 0 or c["epochs"] > 0, f"epochs must be > 0 (or set max_iters), got {c['epochs']}")
    need(c["learning_rate"] >= 0, f"learning_rate must be >= 0, got {c['learning_rate']}")
    need(0 <= c["min_lr"] <= c["learning_rate"], f"min_lr must be in [0, learning_rate], got {c['min_lr']}")
    need(c["warmup_iters"] >= -1, f"warmup_iters must be >= 0 (or -1 for warmup_ratio), got {c['warmup_iters']}")
    need(0 <= c["warmup_ratio"] < 1, f"warmup_ratio must be in [0, 1), got {c['warmup_ratio']}")
    need(c["weight_decay"] >= 0, f"weight_decay must be >= 0, got {c['weight_decay']}")
    need(c["grad_clip"] >= 0, f"grad_clip must be >= 0, got {c['grad_clip']}")
    for k in ("dropout", "label_smoothing", "beta1", "beta2"):
        need(0 <= c[k] < 1, f"{k} must be in [0, 1), got {c[k]}")
    need(c["max_seq_len"] >= 2, f"max_seq_len must be >= 2, got {c['max_seq_len']}")
    need(c["dtype"] in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16, got {c['dtype']!r}")
    need(c["parallel"] in ("ddp", "fsdp"), f"parallel must be ddp or fsdp, got {c['parallel']!r}")
    need(c["on_nonfinite"] in ("stop", "skip"), f"on_nonfinite must be stop or skip, got {c['on_nonfinite']!r}")
    need(c["optimizer"] in ("adamw", "adamw_bf16"), f"optimizer must be adamw or adamw_bf16, got {c['optimizer']!r}")
    need(c["device"] == "cpu" or c["device"].startswith("cuda"), f"device must be cpu or cuda[:N], got {c['device']!r}")
    need(c["init_from"] != "", "init_from is empty: set it to an HF LLaMA directory (config.json, model.safetensors, "
                               "tokenizer.model)")


# -----------------------------------------------------------------------------
# data: which examples form each optimizer step, and how they become tensors

def step_examples(it, n, global_batch, seed):
    """Example indices (global_batch,) of optimizer step `it`: epoch e is a permutation fixed by (seed, e), cut
    into consecutive global batches (a partial last one is dropped). Depends on nothing but seed and global batch."""
    per_epoch = n // global_batch
    epoch, k = divmod(it, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * global_batch:(k + 1) * global_batch]


def split_micro_batches(ids, lengths, batch_size, n_micro):
    """The global batch sorted by length (longest first, ties by position) cut into n_micro micro-batches of
    batch_size: similar lengths share a micro-batch, so little is padded. Micro-batch m goes to rank m % world."""
    order = ids[np.argsort(-lengths[ids], kind="stable")]
    return [order[m * batch_size:(m + 1) * batch_size] for m in range(n_micro)]


def collate(data, ids, plw, pad_multiple=1):
    """Examples -> x (B, T) inputs, y (B, T) targets (-1 = padding), w (B, T) loss weights, p (B, T) prompt mask.
    Targets are the next tokens, so BOS is never a target; a target's role is the role of the token it predicts."""
    tokens, roles, offsets = data["tokens"], data["roles"], data["offsets"]
    lens = offsets[ids + 1] - offsets[ids] - 1                                    # targets per example
    T = int(-(-lens.max() // pad_multiple) * pad_multiple)
    x = np.zeros((len(ids), T), dtype=np.int64)
    y = np.full((len(ids), T), -1, dtype=np.int64)
    p = np.zeros((len(ids), T), dtype=bool)
    for b, (i, L) in enumerate(zip(ids, lens)):
        o = offsets[i]
        x[b, :L] = tokens[o:o + L]
        y[b, :L] = tokens[o + 1:o + L + 1]
        p[b, :L] = roles[o + 1:o + L + 1] == 0                                     # 0 = PROMPT
    w = np.where(y < 0, 0.0, np.where(p, plw, 1.0)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(p)


def target_counts(data, ids):
    """(targets, prompt targets) of the examples, from the data alone: identical on every rank, no device sync."""
    o = data["offsets"]
    prompt = sum(int((data["roles"][o[i] + 1:o[i + 1]] == 0).sum()) for i in ids)
    return int((o[ids + 1] - o[ids] - 1).sum()), prompt


# -----------------------------------------------------------------------------
# AdamW on bf16 weights: the memory plan for full fine-tuning of a 7B model on one 80 GB GPU

def stochastic_round_bf16(x):
    """fp32 -> bf16 rounding up or down at random, with probability by distance, so E[result] = x: an update far
    below bf16's spacing (2e-5 on a weight of 1e-2, whose spacing is 6e-5) still moves the weight on average,
    where round-to-nearest would drop it every time. Adds 16 random bits below bf16's mantissa, then truncates."""
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


class AdamWBF16(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update, decoupled weight decay) for bf16 parameters: the moments are kept in
    bf16 too, and each step is computed in fp32 and written back with stochastic rounding. Weights, gradients and
    both moments take 2 bytes per parameter each, 8 in all (LLaMA-2-7B: 54 GB), against 16 with fp32 master
    weights (108 GB). train.py's tests measure what it costs in accuracy."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, stochastic_rounding=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        # round-to-nearest is there to measure what stochastic rounding buys (README: the 7B memory plan)
        self.round = stochastic_round_bf16 if stochastic_rounding else (lambda x: x.to(torch.bfloat16))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                state["step"] += 1
                t = state["step"]
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - beta1)                   # fp32 math, bf16 storage
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                w = p.float().mul_(1 - group["lr"] * group["weight_decay"])
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                w.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
                p.copy_(self.round(w))
                state["exp_avg"].copy_(self.round(m))
                state["exp_avg_sq"].copy_(self.round(v))


def get_lr(it, total, warmup):
    """learning rate of optimizer step it (0-based): linear warmup, then cosine to min_lr (or constant)."""
    if it < warmup:
        return learning_rate * (it + 1) / (warmup + 1)
    if not decay_lr:
        return learning_rate
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def data_fingerprint(data):
    h = hashlib.sha256()
    for k in ("tokens", "roles", "offsets"):
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return h.hexdigest()[:16]


# -----------------------------------------------------------------------------
# checkpoints: out_dir/ckpt-NNNNNN/ is an HF model directory plus train_state.pt, written as a hidden temp
# directory and renamed into place, so a crash at any moment leaves the previous checkpoint whole

def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(out):
    return sorted(p for p in Path(out).glob("ckpt-[0-9]*") if p.is_dir() and (p / "train_state.pt").is_file())


def save_checkpoint(out, it, model_sd, args, tokenizer_path, state, keep):
    from checkpoint import save_hf_checkpoint
    final = Path(out) / f"ckpt-{it:06d}"
    tmp = Path(out) / f".ckpt-{it:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_hf_checkpoint(model_sd, args, tmp)
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
    torch.save(state, tmp / "train_state.pt")
    if int(os.environ.get("NANOPLW_FAULT_KILL_CKPT", -1)) == it:  # fault injection, for the tests: die mid-write
        os.kill(os.getpid(), signal.SIGKILL)
    for f in tmp.iterdir():  # model files were fsynced by save_hf_checkpoint; these two were not
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(out)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)
    return final


def export_final(out, ckpt):
    """out_dir itself becomes an HF model directory: hard links to the final checkpoint's files, each replaced
    atomically (a copy where the filesystem has no hard links). config.json comes last, so its presence in out_dir
    means the export is complete (sweep.py relies on that)."""
    (Path(out) / "config.json").unlink(missing_ok=True)
    files = sorted((f for f in ckpt.iterdir() if f.name != "train_state.pt"), key=lambda f: f.name == "config.json")
    for f in files:
        tmp = Path(out) / f".{f.name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(f, tmp)
        except OSError:
            shutil.copyfile(f, tmp)
        os.replace(tmp, Path(out) / f.name)
    for stale in Path(out).glob("model*.safetensors*"):  # shards of an earlier export with another sharding
        if not (ckpt / stale.name).exists():
            stale.unlink()
    fsync_dir(out)


def write_json_atomic(path, obj):
    from util import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


# -----------------------------------------------------------------------------

def main(argv):
    cfg = load_config(argv)
    globals().update(cfg)
    from model import Transformer
    from checkpoint import args_from_hf_config, hf_key, load_model
    from util import atomic_write
    from tokenizer import Tokenizer
    from data.prepare import prepare_dataset

    # distributed setup: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
    distributed = int(os.environ.get("RANK", -1)) != -1
    if distributed:
        import torch.distributed as dist
        backend = "nccl" if device.startswith("cuda") else "gloo"
        local_rank = int(os.environ["LOCAL_RANK"])
        dev = f"cuda:{local_rank}" if device.startswith("cuda") else "cpu"
        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, device_id=torch.device(dev) if dev.startswith("cuda") else None)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world, dev = 0, 1, device
    master = rank == 0
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device=cpu)")
    torch.manual_seed(seed)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    out = Path(out_dir)
    tok_path = Path(tokenizer) if tokenizer else Path(init_from) / "tokenizer.model"
    if not (Path(init_from) / "config.json").is_file():
        raise ConfigError(f"no model at init_from={init_from!r}: put a LLaMA in HF layout there (config.json, "
                          f"model.safetensors or its shards, tokenizer.model; e.g. `huggingface-cli download "
                          f"meta-llama/Llama-2-7b-hf --local-dir {init_from}`) or pass --init_from=/path/to/model")
    if not tok_path.is_file():
        raise ConfigError(f"tokenizer not found: {tok_path} (set tokenizer= to a sentencepiece tokenizer.model)")
    try:
        tok = Tokenizer(tok_path)
        base_args = args_from_hf_config(json.loads((Path(init_from) / "config.json").read_text()),
                                             source=str(Path(init_from) / "config.json"))
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(str(e)) from None

    # the run directory: refuse to mix two runs
    ckpts = list_checkpoints(out) if out.is_dir() else []
    ours = [out / "run_config.json", out / "log.jsonl"] + ckpts
    exported = [out / "config.json", out / "tokenizer.model"] + (list(out.glob("model*.safetensors*")) if out.is_dir() else [])
    found = [p.name for p in exported if p.exists()]
    if found and not (out / "run_config.json").exists():  # e.g. out_dir = the base model: never touch it
        raise ConfigError(f"{out} holds a model that is not a nanoPLW run ({', '.join(found)}): choose another out_dir")
    if resume and not ckpts:
        raise ConfigError(f"--resume=True but {out} holds no checkpoint to resume from")
    if not resume and any(p.exists() for p in ours) and not overwrite:
        raise ConfigError(f"{out} already holds a run: pass --resume=True to continue it or --overwrite=True to "
                          f"start over in it")

    # data
    train_data, val_data, report = prepare_dataset(dataset, str(tok_path), max_seq_len, val_size=val_size, seed=seed,
                                                   verbose=master)
    n = len(train_data["offsets"]) - 1
    lengths = np.diff(train_data["offsets"])
    G = batch_size * gradient_accumulation_steps * world
    if n < G:
        raise ConfigError(f"the dataset has {n} training examples, fewer than one global batch of {G} "
                          f"(batch_size {batch_size} x gradient_accumulation_steps {gradient_accumulation_steps} x {world} ranks)")
    per_epoch = n // G
    total = max_iters if max_iters > 0 else max(1, int(epochs * per_epoch))
    warmup = warmup_iters if warmup_iters >= 0 else math.ceil(warmup_ratio * total)
    fingerprint = data_fingerprint(train_data)

    # model: float32 master weights; bf16 compute through autocast (single/DDP) or FSDP's mixed precision
    ptdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    if optimizer == "adamw_bf16" and (ptdtype != torch.bfloat16 or (distributed and parallel == "fsdp")):
        raise ConfigError("optimizer='adamw_bf16' keeps the weights in bf16: it needs dtype='bfloat16' and does not "
                          "combine with parallel='fsdp' (FSDP already shards fp32 state across GPUs)")
    wdtype = torch.bfloat16 if optimizer == "adamw_bf16" else torch.float32  # the weights' own dtype
    if tok.vocab_size != base_args.vocab_size:
        raise ConfigError(f"tokenizer {tok_path} has {tok.vocab_size} tokens but the model in {init_from} has a "
                          f"vocabulary of {base_args.vocab_size}: they do not belong together")
    if max_seq_len > base_args.max_seq_len:
        raise ConfigError(f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings {base_args.max_seq_len}")
    start = 0
    state = None
    if resume:
        ckpt = ckpts[-1]
        state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=False, mmap=True)
        was = {**DEFAULTS, **state["config"]}  # a key added since the run started had its default then
        changed = [f"{k}: {was[k]!r} -> {cfg[k]!r}" for k in cfg if k not in RESUMABLE_CHANGES and was[k] != cfg[k]]
        if state["global_batch"] != G:
            changed.append(f"global batch size: {state['global_batch']} -> {G}")
        if state["data_fingerprint"] != fingerprint:
            changed.append(f"training data: fingerprint {state['data_fingerprint']} -> {fingerprint}")
        if changed:
            raise ConfigError(f"cannot resume {out}: the run was started with different settings ({'; '.join(changed)})")
        start = state["iter"]
        load_dir = ckpt
    else:
        load_dir = Path(init_from)
    fsdp = distributed and parallel == "fsdp"
    try:
        if fsdp:  # every rank builds on meta; rank 0 alone reads the checkpoint and broadcasts it below
            with torch.device("meta"):
                model = Transformer(base_args)
            full_sd = load_model(load_dir, dtype=wdtype).state_dict() if master else {}
        else:
            model = load_model(load_dir, device=dev, dtype=wdtype)
    except (FileNotFoundError, ValueError) as e:  # a broken checkpoint is the user's to fix: say what is wrong
        raise ConfigError(str(e)) from None
    for m in model.modules():  # dropout is a training setting, not part of the checkpoint
        if hasattr(m, "dropout"):
            m.dropout = dropout
    model.args.dropout = dropout
    model.activation_checkpointing = activation_checkpointing
    model.train()
    if fsdp:
        from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, StateDictOptions
        mp = MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        model.to_empty(device=dev)
        set_model_state_dict(model, full_sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        model.reset_rope(device=dev)  # buffers are not sharded or broadcast: compute them where they live
        del full_sd
    raw_model = model

    # optimizer: AdamW, no decay on norm weights (1-D), fused kernels on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if optimizer == "adamw_bf16":
        opt = AdamWBF16(groups, lr=learning_rate, betas=(beta1, beta2), eps=1e-8)
    else:
        opt = torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), eps=1e-8, fused=dev.startswith("cuda"))
    if state is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
            set_optimizer_state_dict(model, opt, state["optimizer"] if master else {},
                                     options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        else:
            opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"][rank % len(state["rng"]["torch"])])
        if dev.startswith("cuda") and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])])
        del state

    if compile:  # dynamic: sequence lengths vary from micro-batch to micro-batch, one graph serves them all
        model = torch.compile(model, dynamic=True)
    if distributed and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if dev.startswith("cuda") else None)
    # bf16 compute on fp32 weights through autocast; FSDP casts through its policy, bf16 weights need neither
    autocast = (torch.autocast(device_type="cuda" if dev.startswith("cuda") else "cpu", dtype=ptdtype)
                if not fsdp and ptdtype != torch.float32 and wdtype == torch.float32 else nullcontext())
    # padding: micro-batches are cut from the length-sorted global batch, so on Stanford Alpaca (LLaMA tokenizer,
    # global batch 128, micro-batch 4) exact lengths waste 3.9% of the tokens, a multiple of 8 (tensor-core
    # friendly shapes) 6.4%, a multiple of 64 23%
    pad_multiple = 8 if dev.startswith("cuda") else 1
    pin = dev.startswith("cuda")  # page-locked host memory: the copies to the GPU do not block the host

    # the run record
    if master:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # --overwrite: nothing of the old run may pass for the new one, its exported model neither
            for p in ours + exported:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        write_json_atomic(out / "run_config.json", {**cfg, "world_size": world, "global_batch": G, "total_iters": total,
                                                    "warmup_iters_resolved": warmup, "data": report,
                                                    "data_fingerprint": fingerprint})
        print("config: " + json.dumps(cfg), file=sys.stderr)
        print(f"{n} training examples, global batch {G} ({batch_size} x {gradient_accumulation_steps} accumulation x "
              f"{world} ranks), {per_epoch} steps/epoch, {total} steps, warmup {warmup}", file=sys.stderr)
        for stale in out.glob(".ckpt-*.tmp"):  # a checkpoint whose writing was killed: never renamed, never valid
            shutil.rmtree(stale, ignore_errors=True)
        log_path = out / "log.jsonl"
        if resume and log_path.exists():
            # keep what was logged up to the checkpoint we resume from; a kill mid-append can leave a torn last line
            def logged_before(line):
                try:
                    return json.loads(line)["iter"] <= start
                except (json.JSONDecodeError, KeyError, TypeError):
                    return False
            keep = [l for l in log_path.read_text().splitlines() if logged_before(l)]
            atomic_write(log_path, lambda tmp: Path(tmp).write_text("".join(l + "\n" for l in keep)))
        log_file = open(log_path, "a")

    def checkpoint(it):
        """Save a resumable checkpoint after `it` steps. Collective under FSDP (all ranks gather), rank 0 writes."""
        if fsdp:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            sd = get_model_state_dict(raw_model, options=opts)
            opt_sd = get_optimizer_state_dict(raw_model, opt, options=opts)
        else:
            sd, opt_sd = raw_model.state_dict(), opt.state_dict()
        rng = {"torch": [torch.get_rng_state()], "cuda": [torch.cuda.get_rng_state()] if dev.startswith("cuda") else []}
        if distributed:  # every rank's generator: dropout masks differ per rank
            gathered = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = {k: [g[k][0] for g in gathered if g[k]] for k in rng}
        path = None
        if master:
            train_state = {"iter": it, "optimizer": opt_sd, "rng": rng, "config": cfg, "global_batch": G,
                           "data_fingerprint": fingerprint}
            path = save_checkpoint(out, it, {hf_key(k): v for k, v in sd.items()}, raw_model.args, tok_path,
                                   train_state, keep_checkpoints)
        if distributed:
            dist.barrier()
        return path

    @torch.no_grad()
    def evaluate():
        """weighted loss and completion loss over the validation split; every rank runs the same number of
        forward passes (FSDP's collectives need that), a rank without examples left runs one with zero weight"""
        raw_model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # sum w*CE, sum w, completion CE, completion targets
        nval = len(val_data["offsets"]) - 1
        for s in range(0, nval, batch_size * world):
            ids = np.arange(s + rank * batch_size, min(s + (rank + 1) * batch_size, nval))
            x, y, w, p = collate(val_data, ids if len(ids) else np.arange(1), prompt_loss_weight)
            x, y, w, p = x.to(dev), y.to(dev), w.to(dev) * bool(len(ids)), p.to(dev)
            with autocast:
                ce = model(x, y)
            comp = ((y >= 0) & ~p) & bool(len(ids))
            sums += torch.stack([(ce * w).sum(), w.sum(), (ce * comp).sum(), comp.sum()]).double()
        if distributed:
            dist.all_reduce(sums)
        raw_model.train()
        s = sums.tolist()
        return {"val_loss": s[0] / max(s[1], 1e-12), "val_completion_loss": s[2] / max(s[3], 1)}

    # SIGINT / SIGTERM: finish the step in flight, save a checkpoint, exit
    stop_signal = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop_signal.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_signal.append(signum))

    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, disable=not master, desc="train", dynamic_ncols=True, file=sys.stderr)
    peak_flops = 989e12 if dev.startswith("cuda") else None  # H100/H200 SXM dense bf16
    # useful FLOPs of a sequence of T targets: T * flops_per_token(T), which is linear in T: T * (f0 + f1 * T)
    f0 = raw_model.flops_per_token(0)
    f1 = raw_model.flops_per_token(1) - f0
    nan_at = int(os.environ.get("NANOPLW_FAULT_NAN_ITER", -1))  # fault injection, for the tests
    n_micro = gradient_accumulation_steps * world
    t_last, tokens_since, padded_since, flops_since = time.time(), 0, 0, 0.0
    it = start
    while it < total:
        lr = get_lr(it, total, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        ids = step_examples(it, n, G, seed)
        n_targets, n_prompt = target_counts(train_data, ids)
        W = prompt_loss_weight * n_prompt + (n_targets - n_prompt)  # sum of w_t over the global batch
        micro = split_micro_batches(ids, lengths, batch_size, n_micro)
        stats = torch.zeros(3, dtype=torch.float64, device=dev)  # sum w*CE, prompt CE, completion CE (this rank)
        for k, mb in enumerate(micro[rank::world]):
            x, y, w, p = collate(train_data, mb, prompt_loss_weight, pad_multiple)
            x, y, w, p = ((t.pin_memory() if pin else t).to(dev, non_blocking=True) for t in (x, y, w, p))
            last = k == gradient_accumulation_steps - 1
            sync = model.no_sync() if distributed and not fsdp and not last else nullcontext()
            if fsdp:
                raw_model.set_requires_gradient_sync(last)
            with sync, autocast:
                ce = model(x, y, label_smoothing=label_smoothing)                                  # (B, T) fp32
                loss = (ce * w).sum() * (world / max(W, 1e-12))  # DDP/FSDP average the ranks' gradients: undo that
                if it == nan_at:
                    loss = loss * float("nan")
            loss.backward()
            with torch.no_grad():
                valid = y >= 0
                stats += torch.stack([(ce * w).sum(), (ce * (valid & p)).sum(), (ce * (valid & ~p)).sum()]).double()
        if grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([q.grad for q in model.parameters() if q.grad is not None])
        gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)  # the step's one host sync
        if not math.isfinite(gnorm) or W <= 0:
            opt.zero_grad(set_to_none=True)
            if W > 0 and on_nonfinite == "stop":
                path = checkpoint(it)  # the weights are still those before this step: the last good state
                if master:
                    bar.close()
                    print(f"error: non-finite loss/gradient at iter {it + 1}: stopped; the last good state (after "
                          f"iter {it}) is saved in {path}. Resume with --resume=True, or set on_nonfinite='skip'",
                          file=sys.stderr)
                raise SystemExit(3)
            if master:
                why = "non-finite gradient" if W > 0 else "no target with non-zero weight"
                print(f"warning: iter {it + 1} skipped: {why}", file=sys.stderr)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
        it += 1
        bar.update(1)
        tokens_since += n_targets
        padded_since += sum(len(mb) * -(-int(lengths[mb].max() - 1) // pad_multiple) * pad_multiple for mb in micro)
        T = (lengths[ids] - 1).astype(np.float64)                                                    # (G,) targets
        flops_since += float(f0 * T.sum() + f1 * (T * T).sum())

        if it % log_interval == 0 or it == total:
            if distributed:
                dist.all_reduce(stats)
            s = stats.tolist()
            dt = time.time() - t_last
            row = {"iter": it, "epoch": round(it / per_epoch, 4), "loss": s[0] / max(W, 1e-12),
                   "prompt_loss": s[1] / max(n_prompt, 1), "completion_loss": s[2] / max(n_targets - n_prompt, 1),
                   "lr": lr, "grad_norm": gnorm, "tokens": n_targets, "padding": round(1 - tokens_since / padded_since, 4),
                   "tokens_per_s": round(tokens_since / dt, 1)}
            if peak_flops:  # useful FLOPs only: padding is not counted, as in bench.py
                row["mfu"] = round(flops_since / dt / (peak_flops * world), 4)
            if val_data is not None and ((eval_interval and it % eval_interval == 0) or it == total):
                row.update(evaluate())
            if master:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            t_last, tokens_since, padded_since, flops_since = time.time(), 0, 0, 0.0
        if (checkpoint_interval and it % checkpoint_interval == 0 and it < total) or (stop_signal and it < total):
            path = checkpoint(it)
            if stop_signal:
                if master:
                    bar.close()
                    print(f"interrupted by signal {stop_signal[0]} after iter {it}: checkpoint saved in {path}; "
                          f"continue with --resume=True", file=sys.stderr)
                raise SystemExit(128 + stop_signal[0])

    final = checkpoint(total)
    if master:
        bar.close()
        export_final(out, final)
        log_file.close()
        print(f"done: {total} steps; the fine-tuned model is in {out} (HF layout)", file=sys.stderr)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    from data.prepare import DataError
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
