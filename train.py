"""
Supervised instruction fine-tuning of a LLaMA with a prompt loss weight (PLW).

    python train.py configs/tiny_stories.py                        # CPU quick start, about a minute
    python train.py configs/short_plw01.py --prompt_loss_weight=0.05
    torchrun --standalone --nproc_per_node=8 train.py configs/short_plw01.py --parallel=fsdp
    python train.py --help                                         # every option, its default and meaning

The loss of one optimizer step over a global batch B (all micro-batches, all ranks) is
    loss = sum_{t in B} w_t * CE_t / sum_{t in B} w_t,    w_t = PLW (prompt target), 1 (completion target), 0 (padding)
Every rank knows the whole global batch, so the denominator is computed from the data up front and the update is
the same however B is split. PLW=0 is Stanford Alpaca's prompt masking, PLW=1 plain LM loss. docs/architecture.md
has the data flow and the other normalisations (loss_norm).
"""
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import (check_checkpoint, check_disk, checkpoint, claim_run_dir, clear_run_dir, empty_model,
                        export_final, finish_checkpoint, human_size, list_checkpoints, load_model, load_optimizer,
                        load_weights, open_log, read_args, resume_state)
from config import ConfigError, load_config
from data.batch import (collate, collate_packed, data_fingerprint, example_targets, pack_rows, padded_tokens,
                        split_by_tokens, split_micro_batches, step_examples)
from data.prepare import COMPLETION, PROMPT, TEXT, prepare_dataset
from model import Transformer
from optim import AdamWBF16
from tokenizer import Tokenizer
from util import STOP, DataError, catch_stop_signals, choose_threads, cli, write_json

_imported = set(globals())  # the names above are not settings (the role codes PROMPT, COMPLETION, TEXT are ints)
# -----------------------------------------------------------------------------
# default config: Stanford Alpaca's recipe, which the paper used (LLaMA-2-7B, 3 epochs, global batch 128)
out_dir = "out"                 # the run directory; it ends as an HF model directory + log.jsonl
init_from = ""                  # an HF LLaMA directory: config.json + model.safetensors (or sharded)
tokenizer = ""                  # a tokenizer.model; "" = the one in init_from
dataset = "alpaca"              # alpaca | alpaca_short | alpaca_cleaned | alpaca_cleaned_short | a JSON/JSONL path
prompt_loss_weight = 0.0        # PLW: the weight of prompt tokens in the loss
text_loss_weight = 1.0          # the weight of plain-text records' tokens ({"text": ...} records in the dataset)
loss_norm = "global"            # global: sum w*CE / sum w over the global batch | micro_mean: the mean over micro-
                                # batches of batch_size examples (in the step's random order, as HF Trainer's sampler
                                # forms them) of each one's weighted mean | nonzero: / #tokens with w > 0
max_seq_len = 512               # examples are truncated to this many tokens (BOS included), as Stanford did
val_size = 0                    # examples held out (fixed by seed) for a validation loss; 0 trains on all
batch_size = 4                  # micro-batch size per process (rows)
global_batch_size = 128         # examples per optimizer step over all micro-batches and GPUs (the paper: 128); the
                                # accumulation is global_batch_size / (batch_size x GPUs), so any GPU count trains alike
gradient_accumulation_steps = 0  # 0 = derived from global_batch_size; > 0 must agree with it (with global_batch_size
                                # = 0 it sets the global batch: batch_size x gradient_accumulation_steps x GPUs)
tokens_per_micro_batch = 0      # > 0: cut the length-sorted global batch into micro-batches of at most this many padded
                                # tokens (rows x padded length) instead of batch_size rows: few large micro-steps, the
                                # same update (data/batch.py split_by_tokens); 0 = batch_size rows each
pack = False                    # with tokens_per_micro_batch > 0: pack the global batch's examples into rows of up to that
                                # many tokens, one row per micro-step, attention kept within each example and positions
                                # restarting (data/batch.py pack_rows): no padding, the same update for every loss_norm
epochs = 3.0                    # training length in epochs (a partial last global batch of an epoch is dropped)
max_iters = 0                   # > 0: train this many optimizer steps instead of `epochs`
learning_rate = 2e-5            # peak learning rate
min_lr = 0.0                    # cosine decay ends here
warmup_iters = -1               # linear warmup steps; -1 = ceil(warmup_ratio * total steps)
warmup_ratio = 0.03             # warmup as a fraction of the total steps (when warmup_iters = -1)
decay_lr = True                 # cosine decay after warmup; False = constant
weight_decay = 0.0              # AdamW decoupled weight decay (not applied to norm weights)
beta1 = 0.9                     # AdamW beta1
beta2 = 0.999                   # AdamW beta2
grad_clip = 1.0                 # max global gradient norm; 0 = off
dropout = 0.0                   # attention-probability + residual dropout (HF LLaMA has attention dropout only)
label_smoothing = 0.0           # applied inside the same per-token weighting
minkowski_lambda = 0.0          # > 0: add lambda * sum |theta - theta_0|^p over the weights (theta_0 = init_from)
minkowski_p = 2.0               # the p of the Minkowski distance penalty (>= 1)
seed = 1337                     # fixes the data order, the validation split and dropout
device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu | cuda | cuda:N
dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # float32 | bfloat16 (autocast, fp32 weights)
compile = torch.cuda.is_available()  # torch.compile each transformer block (model.compile_blocks: dynamic lengths,
                                     # no graph breaks; the loss and FSDP/DDP/checkpointing hooks stay eager), and
                                     # adamw_bf16's update (one fused kernel per parameter)
parallel = "ddp"                # under torchrun: ddp (replicate) | fsdp (FSDP2: shard params, grads, state)
checkpoint_interval = 0         # save a resumable checkpoint every N steps (0: only at the end)
keep_checkpoints = 1            # how many step checkpoints to keep in out_dir
checkpoint_async = True         # write checkpoints in a background thread (torch.distributed.checkpoint.async_save):
                                # training waits only for the copy of the state to host memory
checkpoint_weights_only = False  # checkpoints without the optimizer state: a third of the size (AdamW), not resumable
resume = False                  # continue the run in out_dir from its last checkpoint (max_iters/epochs may grow)
overwrite = False               # allow starting a new run in an out_dir that holds another run
log_interval = 1                # log every N steps (1 is needed for the loss RSD analysis)
eval_interval = 0               # validation loss every N steps (needs val_size > 0); 0 = only at the end
on_nonfinite = "stop"           # a NaN/inf loss or gradient: stop (saving the last good state) | skip the step
activation_checkpointing = False  # recompute each block's activations in the backward pass: less memory
checkpoint_every = 1            # with activation_checkpointing: only every k-th block recomputes (1 = all, 4 = a quarter)
optimizer = "adamw"             # adamw: fp32 weights and state | adamw_bf16: bf16 weights, gradients and state,
                                # fp32 update math, stochastic rounding (7B on one 80 GB GPU; optim.py)
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if k not in _imported and not k.startswith("_") and isinstance(v, (bool, int, float, str))}
# what may differ when resuming: the micro-batch split of the same global batch gives the same update, and a run
# may be extended (a longer max_iters / epochs recomputes the LR schedule from the resume point on); out_dir is where
# the run is now (a run folder moved or copied elsewhere resumes there)
RESUMABLE_CHANGES = {"resume", "overwrite", "log_interval", "checkpoint_interval", "keep_checkpoints", "compile",
                     "eval_interval", "batch_size", "gradient_accumulation_steps", "device", "parallel",
                     "activation_checkpointing", "max_iters", "epochs", "tokens_per_micro_batch", "out_dir",
                     "pack", "checkpoint_every", "checkpoint_async", "checkpoint_weights_only",
                     "global_batch_size"}  # the global batch itself is compared, however it was given


def check_config(c):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for k in ("prompt_loss_weight", "text_loss_weight"):
        need(math.isfinite(c[k]) and c[k] >= 0, f"{k} must be >= 0, got {c[k]}")
    for k in ("batch_size", "log_interval", "keep_checkpoints", "checkpoint_every"):
        need(c[k] >= 1, f"{k} must be >= 1, got {c[k]}")
    for k in ("max_iters", "checkpoint_interval", "eval_interval", "val_size", "global_batch_size",
              "gradient_accumulation_steps"):
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
    need(c["tokens_per_micro_batch"] >= 0, f"tokens_per_micro_batch must be >= 0, got {c['tokens_per_micro_batch']}")
    need(c["global_batch_size"] > 0 or c["gradient_accumulation_steps"] > 0,
         "global_batch_size and gradient_accumulation_steps are both 0: set global_batch_size (the paper: 128)")
    need(c["tokens_per_micro_batch"] or not c["pack"], "pack=True needs tokens_per_micro_batch > 0 (the rows' length)")
    need(c["minkowski_lambda"] >= 0, f"minkowski_lambda must be >= 0, got {c['minkowski_lambda']}")
    need(c["minkowski_p"] >= 1, f"minkowski_p must be >= 1 (the penalty's gradient is unbounded below), "
                                f"got {c['minkowski_p']}")
    need(c["max_seq_len"] >= 2, f"max_seq_len must be >= 2, got {c['max_seq_len']}")
    choices = {"dtype": ("float32", "bfloat16"), "parallel": ("ddp", "fsdp"), "on_nonfinite": ("stop", "skip"),
               "optimizer": ("adamw", "adamw_bf16"), "loss_norm": ("global", "micro_mean", "nonzero")}
    for k, allowed in choices.items():
        need(c[k] in allowed, f"{k} must be {' or '.join(allowed)}, got {c[k]!r}")
    need(c["device"] == "cpu" or c["device"].startswith("cuda"), f"device must be cpu or cuda[:N], got {c['device']!r}")
    need(c["init_from"] != "", "init_from is empty: set it to an HF LLaMA directory (config.json, model.safetensors, "
                               "tokenizer.model)")


def get_lr(it, total, warmup, c):
    """learning rate of optimizer step it (0-based): linear warmup, then cosine to min_lr (or constant)."""
    lr, min_lr = c["learning_rate"], c["min_lr"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if not c["decay_lr"]:
        return lr
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def global_batch(c, world):
    """(global batch, accumulation steps) for `world` ranks. global_batch_size fixes the update; the accumulation
    follows from it, so the same config trains alike on any number of GPUs. ConfigError, naming the values, for a
    split that does not divide or a gradient_accumulation_steps that disagrees."""
    b, g, a = c["batch_size"], c["global_batch_size"], c["gradient_accumulation_steps"]
    if g == 0:  # the global batch is the product (nanoGPT's way)
        return b * a * world, a
    if a and b * a * world != g:
        raise ConfigError(f"batch_size {b} x gradient_accumulation_steps {a} x {world} GPU(s) = {b * a * world}, but "
                          f"global_batch_size is {g}: set one of them (gradient_accumulation_steps=0 derives it)")
    if c["tokens_per_micro_batch"]:  # micro-batches are cut by tokens: only the global batch matters
        return g, a or max(1, g // (b * world))
    if g % (b * world):
        per = g // world if g % world == 0 else None
        fix = (f"a batch_size that divides {per} ({', '.join(str(d) for d in range(1, per + 1) if per % d == 0)})"
               if per else f"a number of GPUs that divides {g}")
        raise ConfigError(f"global_batch_size {g} is not divisible by batch_size {b} x {world} GPU(s) = {b * world}: "
                          f"choose {fix}")
    return g, g // (b * world)


def example_weights(n_targets, n_prompt, n_text, plw, text_weight=1.0):
    """(sum of w, count of w > 0) per example, from its counts of targets, prompt targets and plain-text targets
    (data/batch.example_targets)"""
    n_t, n_p, n_x = (v.astype(np.float64) for v in (n_targets, n_prompt, n_text))
    n_c = n_t - n_p - n_x                                                                   # completion targets
    return plw * n_p + text_weight * n_x + n_c, n_c + (n_p if plw > 0 else 0) + (n_x if text_weight > 0 else 0)


def hf_micro_batches(n, batch_size):
    """Position ranges of HF Trainer's micro-batches in a step of n examples: consecutive runs of batch_size in the
    step's random order (its sampler's), whatever split this run computes the step with."""
    return [range(k, min(k + batch_size, n)) for k in range(0, n, batch_size)]


def row_factors(c, sw, nz, world):
    """What each example's sum w*CE is multiplied by, (G,) in the step's order, so that the accumulated gradient is
    the chosen normalisation of the global batch. DDP/FSDP average the ranks' gradients: the factor `world` undoes
    that. sw, nz: example_weights."""
    if c["loss_norm"] == "global":
        return np.full(len(sw), world / max(sw.sum(), 1e-12))
    if c["loss_norm"] == "nonzero":  # WIT / TRL: the count of tokens with non-zero weight, over the global batch
        return np.full(len(sw), world / max(nz.sum(), 1))
    # micro_mean: HF Trainer's accumulation, the mean over its micro-batches of each one's weighted mean. It depends
    # on batch_size (a token weighs more in a micro-batch with less total weight), not on how this run splits the step
    f = np.empty(len(sw))
    mbs = hf_micro_batches(len(sw), c["batch_size"])
    for r in mbs:
        f[r.start:r.stop] = world / (max(sw[r.start:r.stop].sum(), 1e-12) * len(mbs))
    return f


def host_batch(data, mb, plw, pad_multiple, packed, text_weight, ids, factors):
    """One micro-batch as CPU tensors: x, y, w, r (collate's or collate_packed's), keep (the non-padding targets'
    indices: found here, not by a device sync), for packed rows pos and doc (positions restarting per example, and
    each token's example), ex (B, T) each token's example's place in the step's order ids (G + 2 on padding:
    train_step's sink slot), and wl = w x the token's example's row_factor, the weights the loss is summed with."""
    sink = len(factors) + 2
    order = np.argsort(ids)                                  # ids[order] is sorted: a place is found by bisection
    if not packed:
        x, y, w, r = collate(data, mb, plw, pad_multiple, text_weight)
        b = dict(x=x, y=y, w=w, r=r)
        d = np.repeat(np.asarray(mb)[:, None], y.shape[1], axis=1)                         # (B, T) example ids
    else:
        x, y, w, r, pos, doc = collate_packed(data, [mb], plw, pad_multiple, text_weight)
        b = dict(x=x, y=y, w=w, r=r, input_pos=pos, doc=doc)
        d = doc.numpy()                                                                    # (1, T), -1 on padding
    ex = order[np.searchsorted(ids[order], d.clip(0))]                                     # (B, T) places
    ex = np.where((y.numpy() >= 0) & (d >= 0), ex, sink)
    b["keep"] = (y.view(-1) >= 0).nonzero().squeeze(1)                                   # (n,) on the host
    b["ex"] = torch.from_numpy(ex.astype(np.int64))
    b["wl"] = w * torch.from_numpy(np.append(factors, [0.0, 0.0, 0.0])[ex].astype(np.float32))
    return b


def micro_loss(model, x, y, w, label_smoothing, **kw):
    """(loss to backpropagate, per-token CE (B, T) fp32) of one micro-batch; w: the loss weights with the
    normalisation in them (host_batch's wl); kw: input_pos, doc, keep (the model's)"""
    ce = model(x, y, label_smoothing=label_smoothing, **kw)                                 # (B, T) fp32
    return (ce * w).sum(), ce


@torch.no_grad()
def minkowski_penalty(params, base, lam, p):
    """Add the gradient of lam * sum |theta - theta_0|^p to each .grad (all ranks hold the same weights, so no
    communication); returns the penalty. Applied once per optimizer step, before clipping, like a loss term."""
    total = 0.0
    for q, q0 in zip(params, base):
        d = q.detach().float() - q0.float()
        total += float(d.abs().pow(p).sum())
        g = lam * p * d.abs().pow(p - 1) * d.sign()
        q.grad = g.to(q.dtype) if q.grad is None else q.grad.add_(g.to(q.grad.dtype))
    return lam * total


# -----------------------------------------------------------------------------
# checkpoints (checkpoint.py writes them: a crash at any moment leaves the last one whole) and set-up steps

def init_distributed(device):
    """(rank, world, device) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process"""
    if int(os.environ.get("RANK", -1)) == -1:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device=cpu)")
        return 0, 1, device
    dev = f"cuda:{os.environ['LOCAL_RANK']}" if device.startswith("cuda") else "cpu"
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo",
                            device_id=torch.device(dev) if dev.startswith("cuda") else None)
    return dist.get_rank(), dist.get_world_size(), dev


def load_base(c):
    """(tokenizer path, ModelArgs of init_from): user input, checked before the data is prepared"""
    init = Path(c["init_from"])
    if not (init / "config.json").is_file():
        raise ConfigError(f"no model at init_from={c['init_from']!r}: put a LLaMA in HF layout there (config.json, "
                          f"model.safetensors or its shards, tokenizer.model; e.g. `huggingface-cli download "
                          f"meta-llama/Llama-2-7b-hf --local-dir {c['init_from']}`) or pass --init_from=/path/to/model")
    try:  # a sentencepiece or tiktoken-format tokenizer.model; a model dir's config.json may set LLaMA 3's BOS / EOS
        tok = Tokenizer(c["tokenizer"] or init)
        tok_path = Path(tok.path)
        args = read_args(init)  # a broken config.json is named
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    if tok.vocab_size != args.vocab_size:
        raise ConfigError(f"tokenizer {tok_path} has {tok.vocab_size} tokens but the model in {c['init_from']} has a "
                          f"vocabulary of {args.vocab_size}: they do not belong together")
    if c["max_seq_len"] > args.max_seq_len:
        raise ConfigError(f"max_seq_len {c['max_seq_len']} exceeds the model's max_position_embeddings {args.max_seq_len}")
    return tok_path, args


def check_trainable(c, data, G):
    """A run whose loss weights are all zero trains nothing, one with fewer examples than a global batch takes no
    step: refuse it, saying why (prepare_dataset runs this before it writes its cache). PLW > 1 is allowed, noted."""
    n = len(data["offsets"]) - 1
    if n < G:
        raise ConfigError(f"the dataset has {n} training examples, fewer than one global batch of {G}: lower "
                          f"global_batch_size")
    roles, o = data["roles"], data["offsets"]
    targets = np.ones(len(roles), dtype=bool)
    targets[o[:-1]] = False                                                         # BOS is never a target
    n_completion = int((targets & (roles == COMPLETION)).sum())
    n_text = int((targets & (roles == TEXT)).sum()) if c["text_loss_weight"] > 0 else 0
    if n_completion == 0 and n_text == 0 and c["prompt_loss_weight"] == 0:
        raise ConfigError(f"nothing to train: every completion was truncated away (max_seq_len={c['max_seq_len']}) "
                          f"and prompt_loss_weight is 0, so every loss weight is 0")


def build_model(c, base_args, dev, fsdp, master, ckpt=None):
    """The model to train (FSDP2-sharded under parallel=fsdp), in the weights' own dtype, in train mode: init_from's
    weights, or those of the training checkpoint ckpt (resume; then built empty, the checkpoint read straight in)."""
    wdtype = torch.bfloat16 if c["optimizer"] == "adamw_bf16" else torch.float32
    try:
        if fsdp:  # every rank builds on meta; rank 0 alone reads init_from and broadcasts it below
            with torch.device("meta"):
                model = Transformer(base_args)
            full_sd = load_model(c["init_from"], dtype=wdtype).state_dict() if master and not ckpt else {}
        elif ckpt:
            model = empty_model(base_args, dev, wdtype)
            load_weights(model, ckpt)
        else:
            model = load_model(c["init_from"], device=dev, dtype=wdtype)
    except (FileNotFoundError, ValueError) as e:  # a broken checkpoint is the user's to fix: say what is wrong
        raise ConfigError(str(e)) from None
    for m in model.modules():  # dropout is a training setting, not part of the checkpoint
        if hasattr(m, "dropout"):
            m.dropout = c["dropout"]
    model.args.dropout = c["dropout"]
    model.activation_checkpointing, model.checkpoint_every = c["activation_checkpointing"], c["checkpoint_every"]
    model.train()
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        ptdtype = torch.bfloat16 if c["dtype"] == "bfloat16" else torch.float32
        mp = MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        model.to_empty(device=dev)
        if ckpt:  # each rank reads its shard
            load_weights(model, ckpt)
        else:
            set_model_state_dict(model, full_sd,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    if fsdp or ckpt:
        model.reset_rope(device=dev)  # buffers are not saved, sharded or broadcast: compute them where they live
    return model


def build_optimizer(c, model, dev, state, ckpt, rank):
    """AdamW, no decay on norm weights (1-D), fused kernels on CUDA; restored from checkpoint ckpt (its train state
    `state`) when resuming"""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    betas = (c["beta1"], c["beta2"])
    if c["optimizer"] == "adamw_bf16":
        opt = AdamWBF16(groups, lr=c["learning_rate"], betas=betas, eps=1e-8)
    else:
        opt = torch.optim.AdamW(groups, lr=c["learning_rate"], betas=betas, eps=1e-8, fused=dev.startswith("cuda"))
    if state is not None:
        load_optimizer(model, opt, ckpt)  # each rank reads its shard (DCP)
        torch.set_rng_state(state["rng"]["torch"][rank % len(state["rng"]["torch"])])
        if dev.startswith("cuda") and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])])
    return opt


def check_run_disk(c, model, out, ckpts, start, total):
    """Before any long work: can the disk hold the run's checkpoints and export? A checkpoint is the weights plus
    (unless checkpoint_weights_only) AdamW's two moments, each in the weights' dtype: 3x the weights; the most at once
    is keep_checkpoints + 1 while one is being written (then the oldest goes), or keep_checkpoints + the export."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # global sizes, under FSDP too
    size = weights * (1 if c["checkpoint_weights_only"] else 3)
    saves = ((total - start) // c["checkpoint_interval"] if c["checkpoint_interval"] else 0) + 1
    have = len(ckpts)  # already on disk (resume): counted as used, and removed as new ones come
    peak = max((min(c["keep_checkpoints"] + 1, have + saves) - have) * size,
               (min(c["keep_checkpoints"], have + saves) - have) * size + weights)
    check_disk(out, peak, f"this run's checkpoints ({human_size(size)} each, keep_checkpoints={c['keep_checkpoints']}) "
                          f"and its exported model")


@torch.no_grad()
def evaluate(run, model, val_data, autocast):
    """weighted loss and completion loss over the validation split; every rank runs the same number of forward
    passes (FSDP's collectives need that), a rank without examples left runs one with zero weight"""
    c, dev, rank, world = run["cfg"], run["dev"], run["rank"], run["world"]
    run["raw_model"].eval()
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # sum w*CE, sum w, completion CE, completion targets
    nval, bs = len(val_data["offsets"]) - 1, c["batch_size"]
    for s in range(0, nval, bs * world):
        ids = np.arange(s + rank * bs, min(s + (rank + 1) * bs, nval))
        x, y, w, r = (t.to(dev) for t in collate(val_data, ids if len(ids) else np.arange(1), c["prompt_loss_weight"],
                                                 text_weight=c["text_loss_weight"]))
        w = w * bool(len(ids))
        with autocast:
            ce = model(x, y)
        comp = (r == COMPLETION) & bool(len(ids))
        sums += torch.stack([(ce * w).sum(), w.sum(), (ce * comp).sum(), comp.sum()]).double()
    if world > 1:
        dist.all_reduce(sums)
    run["raw_model"].train()
    s = sums.tolist()
    return {"val_loss": s[0] / max(s[1], 1e-12), "val_completion_loss": s[2] / max(s[3], 1)}


def setup(c):
    """Everything before the first step, in order: distributed init, the run directory, the base model's tokenizer
    and shape, the data, the model, the optimizer, the run record. Returns the run's state as a dict."""
    rank, world, dev = init_distributed(c["device"])
    G, accum = global_batch(c, world)  # refused before anything is written
    # under torchrun FSDP2 shards even on one GPU (then it shards nothing, but runs the same code as on many)
    master, fsdp = rank == 0, dist.is_initialized() and c["parallel"] == "fsdp"
    if c["optimizer"] == "adamw_bf16" and (c["dtype"] != "bfloat16" or fsdp):
        raise ConfigError("optimizer='adamw_bf16' keeps the weights in bf16: it needs dtype='bfloat16' and does not "
                          "combine with parallel='fsdp' (FSDP already shards fp32 state across GPUs)")
    if c["minkowski_lambda"] > 0 and fsdp:
        raise ConfigError("minkowski_lambda > 0 does not combine with parallel='fsdp' yet (use ddp)")
    if master and c["prompt_loss_weight"] > 1:
        print(f"note: prompt_loss_weight {c['prompt_loss_weight']} > 1 weighs prompt tokens above completion tokens "
              f"(the paper's range is [0, 1])", file=sys.stderr)
    note = choose_threads(torch) if dev == "cpu" else None  # fewer threads when the cores are busy: faster there
    if note and master:
        print(note, file=sys.stderr)
    torch.manual_seed(c["seed"])
    if dev.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls (bf16 ones are unaffected)
    ckpts = claim_run_dir(c) if master else list_checkpoints(c["out_dir"])  # rank 0 checks and writes out_dir
    if c["resume"]:
        check_checkpoint(ckpts)  # a damaged last checkpoint is named before the data is prepared
    tok_path, base_args = load_base(c)

    train_data, val_data, report = prepare_dataset(c["dataset"], c["tokenizer"] or c["init_from"], c["max_seq_len"],
                                                   val_size=c["val_size"], seed=c["seed"], verbose=master,
                                                   check=lambda train, val: check_trainable(c, train, G))
    n = len(train_data["offsets"]) - 1
    per_epoch = n // G
    total = c["max_iters"] if c["max_iters"] > 0 else max(1, int(c["epochs"] * per_epoch))
    warmup = c["warmup_iters"] if c["warmup_iters"] >= 0 else math.ceil(c["warmup_ratio"] * total)
    fingerprint = data_fingerprint(train_data)
    # micro_mean's update depends on batch_size (HF's micro-batches): then it may not change on resume
    resumable = RESUMABLE_CHANGES - ({"batch_size"} if c["loss_norm"] == "micro_mean" else set())
    state = resume_state(c, ckpts, G, fingerprint, DEFAULTS, resumable) if c["resume"] else None
    ckpt = ckpts[-1] if c["resume"] else None
    model = build_model(c, base_args, dev, fsdp, master, ckpt)
    opt = build_optimizer(c, model, dev, state, ckpt, rank)
    check_run_disk(c, model, c["out_dir"], ckpts, state["iter"] if state else 0, total)
    # theta_0 of the Minkowski penalty: the weights the run started from (init_from, also after a resume)
    base = ([p.detach() for p in load_model(c["init_from"], device=dev, dtype=next(model.parameters()).dtype).parameters()]
            if c["minkowski_lambda"] > 0 else None)
    # DCP's own process group, on the CPU (gloo): async_save's collectives run in a background thread, apart from
    # the training's, and it needs a CPU backend (NCCL alone is refused, under torchrun with one GPU too)
    ckpt_group = dist.new_group(backend="gloo") if dist.is_initialized() else None
    run = dict(cfg=c, raw_model=model, opt=opt, dev=dev, rank=rank, world=world, master=master, fsdp=fsdp, G=G, accum=accum,
               ckpt_group=ckpt_group,
               fingerprint=fingerprint, tok_path=tok_path, train_data=train_data, val_data=val_data, n=n,
               per_epoch=per_epoch, total=total, warmup=warmup, start=state["iter"] if state else 0, base=base)
    if master:
        out = Path(c["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        if not c["resume"]:
            clear_run_dir(out)
        write_json(out / "run_config.json", {**c, "world_size": world, "global_batch": G, "accumulation": accum,
                                             "total_iters": total,
                                             "warmup_iters_resolved": warmup, "data": report,
                                             "data_fingerprint": fingerprint})
        split = (f"micro-batches of <= {c['tokens_per_micro_batch']} tokens" if c["tokens_per_micro_batch"] else
                 f"{c['batch_size']} x {accum} accumulation x {world} ranks")
        print(f"{n} training examples, global batch {G} ({split}), {per_epoch} steps/epoch, {total} steps, warmup "
              f"{warmup}", file=sys.stderr)
        for stale in out.glob(".ckpt-*.tmp"):  # a checkpoint whose writing was killed: never renamed, never valid
            shutil.rmtree(stale, ignore_errors=True)
        run["log_file"] = open_log(out, run["start"], c["resume"])
    return run


def train_step(run, model, it, autocast, pad_multiple):
    """Optimizer step `it`: this rank's micro-batches of the global batch forward and backward, the Minkowski
    penalty, clipping, the update. Returns what the log needs."""
    c, opt, dev, rank, world, fsdp = (run[k] for k in ("cfg", "opt", "dev", "rank", "world", "fsdp"))
    plw, data, lengths = c["prompt_loss_weight"], run["train_data"], run["lengths"]
    lr = get_lr(it, run["total"], run["warmup"], c)
    for group in opt.param_groups:
        group["lr"] = lr
    ids = step_examples(it, run["n"], run["G"], c["seed"])
    n_t, n_p, n_x = example_targets(data, ids)                                     # (G,) targets, prompt, text
    sw, nz = example_weights(n_t, n_p, n_x, plw, c["text_loss_weight"])            # (G,) sum w, count of w > 0
    factors = row_factors(c, sw, nz, world)                                        # (G,)
    budget, packed = c["tokens_per_micro_batch"], c["pack"]
    micro = (pack_rows(ids, lengths, budget, world, pad_multiple) if packed else
             split_by_tokens(ids, lengths, budget, world, pad_multiple) if budget else
             split_micro_batches(ids, lengths, c["batch_size"], run["accum"] * world))
    n_mine = len(micro) // world  # the same on every rank (pack_rows, split_by_tokens: a multiple of world)
    # per example: sum w*CE (in the step's order, for the log's per-micro-batch normalisations); then this rank's
    # prompt and completion CE sums, and a sink for padding. Summed over ranks once, in the step's one transfer
    G = len(ids)
    stats = torch.zeros(G + 3, dtype=torch.float64, device=dev)
    for k, mb in enumerate(micro[rank::world]):
        b = host_batch(data, mb, plw, pad_multiple, packed, c["text_loss_weight"], ids, factors)
        b = {name: (t.pin_memory() if dev.startswith("cuda") else t).to(dev, non_blocking=True) for name, t in b.items()}
        last = k == n_mine - 1
        sync = model.no_sync() if world > 1 and not fsdp and not last else nullcontext()
        if fsdp:
            run["raw_model"].set_requires_gradient_sync(last)
        extra = {name: b[name] for name in ("keep", "input_pos", "doc") if name in b}
        with sync, autocast:
            loss, ce = micro_loss(model, b["x"], b["y"], b["wl"], c["label_smoothing"], **extra)
        loss.backward()
        with torch.no_grad():
            r = b["r"]
            stats.index_add_(0, b["ex"].view(-1), (ce * b["w"]).view(-1).double())
            stats[G:G + 2] += torch.stack([(ce * (r == PROMPT)).sum(), (ce * (r == COMPLETION)).sum()]).double()
    params = run["params"]
    penalty = minkowski_penalty(params, run["base"], c["minkowski_lambda"], c["minkowski_p"]) if run["base"] else None
    if c["grad_clip"] > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
    else:
        gnorm = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None])
    if world > 1:
        dist.all_reduce(stats)  # the step's losses over all ranks, for the log
    gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
    # the step's one host sync: the gradient norm (does the update happen?) and the log's sums, in one transfer
    host = torch.cat([gnorm.reshape(1).to(stats.dtype), stats]).tolist()
    gnorm, stats = host[0], np.array(host[1:])
    W = float(sw.sum())  # sum of w_t over the global batch
    if math.isfinite(gnorm) and W > 0:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return dict(lr=lr, ids=ids, micro=micro, n_targets=int(n_t.sum()), n_prompt=int(n_p.sum()),
                n_completion=int((n_t - n_p - n_x).sum()), W=W, sw=sw, nz=nz, stats=stats,
                gnorm=gnorm, penalty=penalty)


def step_losses(wce, sw, nz, batch_size):
    """The step's loss under each normalisation, from each example's sum w*CE, sum w and count of w > 0 (step
    order): loss (sum w*CE / sum w, the global batch), loss_nonzero (/ count of w > 0), and over HF Trainer's
    micro-batches of batch_size (hf_micro_batches) averaged: loss_micro_mean (each one's sum w*CE / sum w) and
    loss_hf (each one's sum w*CE / count of w > 0: HF's mean over the labels that are not -100, with PLW's weights
    applied to the unmasked prompt labels; docs/analysis.md says why this is what the paper's stack logged)."""
    mbs = hf_micro_batches(len(wce), batch_size)

    def per_micro(den):
        return float(np.mean([wce[r.start:r.stop].sum() / max(den[r.start:r.stop].sum(), 1e-12) for r in mbs]))
    return {"loss": float(wce.sum() / max(sw.sum(), 1e-12)), "loss_nonzero": float(wce.sum() / max(nz.sum(), 1)),
            "loss_micro_mean": per_micro(sw), "loss_hf": per_micro(nz)}


def log_row(run, it, s, window, dt):
    """The log.jsonl row after step `it`: the step's losses (all ranks), and throughput over the logging window"""
    st = s["stats"]  # all ranks' sums, on the host (train_step)
    G = len(s["sw"])
    row = {"iter": it + 1, "epoch": round((it + 1) / run["per_epoch"], 4),
           **step_losses(st[:G], s["sw"], s["nz"], run["cfg"]["batch_size"]),
           "prompt_loss": float(st[G] / max(s["n_prompt"], 1)),
           "completion_loss": float(st[G + 1] / max(s["n_completion"], 1)),
           "lr": s["lr"], "grad_norm": s["gnorm"], "tokens": s["n_targets"],
           "padding": round(1 - window["tokens"] / window["padded"], 4), "tokens_per_s": round(window["tokens"] / dt, 1)}
    if s["penalty"] is not None:
        row["minkowski_penalty"] = s["penalty"]
    if run["dev"].startswith("cuda"):  # useful FLOPs (padding not counted, as in bench.py) / H100-H200 dense bf16 peak
        row["mfu"] = round(window["flops"] / dt / (989e12 * run["world"]), 4)
    return row


# -----------------------------------------------------------------------------

def main(argv):
    catch_stop_signals(interrupt=True)  # Ctrl-C during set-up stops at once; during training, after the step
    c = load_config(DEFAULTS, argv, source=__file__, ignore=("sweep_",),
                    usage="usage: python train.py [config.py ...] [--key=value ...]")
    check_config(c)
    run = setup(c)
    raw_model, dev, world, total, master = (run[k] for k in ("raw_model", "dev", "world", "total", "master"))
    model = raw_model.compile_blocks() if c["compile"] else raw_model  # per block: one graph for all lengths
    if c["compile"] and isinstance(run["opt"], AdamWBF16):
        run["opt"].compile()  # one fused kernel per parameter (optim.py), its rounding noise drawn in the kernel
    if world > 1 and not run["fsdp"]:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if dev.startswith("cuda") else None)
    ptdtype = torch.bfloat16 if c["dtype"] == "bfloat16" else torch.float32
    # bf16 compute on fp32 weights through autocast; FSDP casts through its policy, bf16 weights need neither
    autocast = (torch.autocast(device_type="cuda" if dev.startswith("cuda") else "cpu", dtype=ptdtype)
                if not run["fsdp"] and ptdtype != torch.float32 and c["optimizer"] == "adamw" else nullcontext())
    # a multiple of 8 (tensor-core friendly shapes) wastes 6.4% on Stanford Alpaca, exact lengths 3.9%, 64 23%
    pad_multiple = 8 if dev.startswith("cuda") else 1
    run["params"] = [p for p in raw_model.parameters() if p.requires_grad]
    run["lengths"] = lengths = np.diff(run["train_data"]["offsets"])
    f0 = raw_model.flops_per_token(0)  # a sequence of T targets costs T * (f0 + f1 * T) useful FLOPs
    f1 = raw_model.flops_per_token(1) - f0

    catch_stop_signals(interrupt=False)  # from here a signal finishes the step in flight, checkpoints, exits
    bar = tqdm(total=total, initial=run["start"], disable=None if master else True, desc="train", dynamic_ncols=True,
               file=sys.stderr)  # drawn on a terminal only: a log file gets no progress-bar frames
    t_last, window = time.time(), {"tokens": 0, "padded": 0, "flops": 0.0}
    for it in range(run["start"], total):
        s = train_step(run, model, it, autocast, pad_multiple)
        if not math.isfinite(s["gnorm"]) and c["on_nonfinite"] == "stop":
            path = save(run, it, bar, wait=True)  # the weights are still those before this step: the last good state
            bar.close()
            say(master, f"error: non-finite loss/gradient at iter {it + 1}: stopped; the last good state (after iter "
                        f"{it}) is saved in {path}. Resume with --resume=True, or set on_nonfinite='skip'")
            raise SystemExit(3)
        if not math.isfinite(s["gnorm"]) or s["W"] <= 0:
            say(master, f"warning: iter {it + 1} skipped: "
                        f"{'non-finite gradient' if s['W'] > 0 else 'no target with non-zero weight'}")
        bar.update(1)
        T = (lengths[s["ids"]] - 1).astype(np.float64)                                                # (G,) targets
        window["tokens"] += s["n_targets"]
        window["padded"] += padded_tokens(s["micro"], lengths, pad_multiple, c["pack"])
        window["flops"] += float(f0 * T.sum() + f1 * (T * T).sum())
        if (it + 1) % c["log_interval"] == 0 or it + 1 == total:
            row = log_row(run, it, s, window, time.time() - t_last)
            evals = c["eval_interval"] and (it + 1) % c["eval_interval"] == 0
            if run["val_data"] is not None and (evals or it + 1 == total):
                row.update(evaluate(run, model, run["val_data"], autocast))
            if master:
                run["log_file"].write(json.dumps(row) + "\n")
                run["log_file"].flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{s['lr']:.2e}")
            t_last, window = time.time(), {"tokens": 0, "padded": 0, "flops": 0.0}
        finish_checkpoint(run, wait=False)  # an asynchronous checkpoint, renamed into place once it is written
        if (c["checkpoint_interval"] and (it + 1) % c["checkpoint_interval"] == 0 or STOP) and it + 1 < total:
            path = save(run, it + 1, bar, wait=bool(STOP))
            if STOP:
                bar.close()
                say(master, f"interrupted by signal {STOP[0]} after iter {it + 1}: checkpoint saved in {path}; "
                            f"continue with --resume=True")
                raise SystemExit(128 + STOP[0])

    save(run, total, bar, wait=True)
    bar.close()
    export_final(run)
    if master:
        run["log_file"].close()
    say(master, f"done: {total} steps; the fine-tuned model is in {c['out_dir']} (HF layout)")
    if dist.is_initialized():
        dist.destroy_process_group()


def save(run, it, bar, wait=False):
    """checkpoint(run, it), its refusal (the disk is full) printed below the progress bar rather than inside it"""
    try:
        return checkpoint(run, it, wait)
    except DataError:
        bar.close()
        raise


def say(master, msg):
    if master:
        print(msg, file=sys.stderr)


if __name__ == "__main__":
    cli(main, "train.py")
