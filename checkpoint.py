"""
HF checkpoints: read and write LLaMA directories in transformers' layout (config.json + model.safetensors, or
shards + model.safetensors.index.json), so that `transformers.LlamaForCausalLM.from_pretrained` loads what we save
with identical logits, and we load what it saves.

    model = load_model("path/to/Llama-2-7b-hf", device="cuda", dtype=torch.bfloat16)
    save_model(model, "out/")

Our parameter names are HF's without the "model." prefix (hf_key / our_key). Everything in a checkpoint is user
input: a config we would not compute exactly as HF does, a missing or misshapen tensor, is refused in one line.
"""
import json
import os
import re
import shutil
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from safetensors import safe_open, SafetensorError
from safetensors.torch import save_file

from model import ModelArgs, Transformer
from util import DataError, atomic_write, disk_full, fsync_dir, gb


ARCHITECTURES = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}  # model_type -> the one class read

# DCP in a single process (no torch.distributed): what we ask for, so its note saying it assumes so is noise
warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent is to (save|load)")


def args_from_hf_config(cfg, source="config.json"):
    """ModelArgs from an HF LlamaConfig dict; anything we would not compute exactly as HF does is refused."""
    def bad(msg):
        raise ValueError(f"{source}: {msg}")

    model_type = cfg.get("model_type", "llama")
    archs = cfg.get("architectures") or [ARCHITECTURES.get(model_type, "LlamaForCausalLM")]
    if model_type not in ARCHITECTURES or archs != [ARCHITECTURES[model_type]]:
        bad(f"unsupported architecture {cfg.get('model_type')!r} / {archs} (only model_type 'llama', "
            f"LlamaForCausalLM, and 'mixtral', MixtralForCausalLM)")
    moe = {}
    if model_type == "mixtral":
        for key in ("num_local_experts", "num_experts_per_tok"):
            if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
                bad(f"{key} must be a positive integer, got {cfg.get(key)!r}")
        if cfg["num_experts_per_tok"] > cfg["num_local_experts"]:
            bad(f"num_experts_per_tok {cfg['num_experts_per_tok']} exceeds num_local_experts "
                f"{cfg['num_local_experts']}")
        moe = dict(n_experts=cfg["num_local_experts"], n_experts_per_tok=cfg["num_experts_per_tok"],
                   sliding_window=cfg.get("sliding_window"))
    if cfg.get("hidden_act", "silu") != "silu":
        bad(f"unsupported hidden_act {cfg['hidden_act']!r} (LLaMA uses 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key, False):
            bad(f"{key}=true is not supported (LLaMA has no biases)")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            bad(f"{key} must be a positive integer, got {cfg.get(key)!r}")
    n_heads = cfg["num_attention_heads"]
    n_kv_heads = cfg.get("num_key_value_heads") or n_heads
    if n_heads % n_kv_heads:
        bad(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}")
    # transformers 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters (theta and scaling together)
    rope = dict(cfg.get("rope_parameters") or {})
    rope.update(cfg.get("rope_scaling") or {})
    mixtral = model_type == "mixtral"  # its config class has other defaults for these two
    rope_theta = float(cfg.get("rope_theta", rope.get("rope_theta", 1e6 if mixtral else 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        rope_scaling = None
    elif rope_type in ("linear", "llama3"):
        rope_scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "type")}
        rope_scaling["rope_type"] = rope_type
    else:
        bad(f"unsupported rope type {rope_type!r} (supported: default, linear, llama3)")
    max_seq_len = cfg.get("max_position_embeddings", 2048)
    if moe.get("sliding_window"):  # attention within the window is plain causal attention: never go beyond it
        max_seq_len = min(max_seq_len, moe["sliding_window"])
    return ModelArgs(
        **moe,
        dim=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        hidden_dim=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5 if mixtral else 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_seq_len=max_seq_len,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_id=cfg.get("bos_token_id"),
        eos_id=cfg.get("eos_token_id"),
    )


def hf_config(args, dtype=torch.float32):
    """The config.json that makes transformers.LlamaForCausalLM (MixtralForCausalLM) build exactly this model."""
    if args.n_experts:
        return {
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            **{k: v for k, v in llama_config(args, dtype).items() if k not in (
                "architectures", "model_type", "attention_bias", "mlp_bias", "pretraining_tp")},
            "num_local_experts": args.n_experts, "num_experts_per_tok": args.n_experts_per_tok,
            "sliding_window": args.sliding_window, "output_router_logits": False, "router_aux_loss_coef": 0.02,
            "router_jitter_noise": 0.0,
        }
    return llama_config(args, dtype)


def llama_config(args, dtype):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": args.rope_scaling,
        "tie_word_embeddings": args.tie_word_embeddings,
        "bos_token_id": args.bos_id,
        "eos_token_id": args.eos_id,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_key(name):
    """our parameter name -> the HF checkpoint key"""
    return name if name.startswith("lm_head.") else "model." + name


def our_key(key):
    return key if key.startswith("lm_head.") else key.removeprefix("model.")


def read_args(path):
    """ModelArgs from an HF LLaMA directory's config.json; one-line errors for a missing or unusable one"""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    return args_from_hf_config(cfg, source=str(path / "config.json"))


def load_model(path, device="cpu", dtype=None):
    """Load an HF LLaMA directory (config.json + model.safetensors or a sharded model.safetensors.index.json).

    The model is built on the meta device and each tensor is read from the memory-mapped file straight into
    its final device and dtype, so a checkpoint needs about its own size in memory, not twice that.
    dtype None keeps the dtype stored in the checkpoint.
    """
    path = Path(path)
    args = read_args(path)
    if (path / ".metadata").is_file() and not list(path.glob("model*.safetensors*")):  # a training checkpoint
        return load_training_checkpoint(path, args, device, dtype)
    files = checkpoint_files(path)

    with torch.device("meta"):
        model = Transformer(args)
    expected = {hf_key(k): p.shape for k, p in model.named_parameters()}  # a tied head appears once
    found = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as sf:
                for k in sf.keys():
                    if k in found:
                        raise ValueError(f"tensor {k} appears in both {found[k][0].name} and {f.name}")
                    found[k] = (f, tuple(sf.get_slice(k).get_shape()))
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from None
    ignored = {k for k in found if re.search(r"\.rotary_emb\.inv_freq$", k)}  # old checkpoints saved RoPE buffers
    if args.tie_word_embeddings and "lm_head.weight" in found:
        ignored.add("lm_head.weight")  # some tied checkpoints store the head too; HF ties it and ignores it
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected) - ignored)
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
    for k, shape in expected.items():
        if found[k][1] != tuple(shape):
            raise ValueError(f"{path}: tensor {k} has shape {list(found[k][1])}, expected {list(shape)} from config.json")

    for f in files:
        with safe_open(f, framework="pt", device="cpu") as sf:
            for k in sf.keys():
                if k in ignored:
                    continue
                t = sf.get_tensor(k)
                t = t.to(device=device, dtype=dtype or t.dtype)
                mod, _, attr = our_key(k).rpartition(".")
                setattr(model.get_submodule(mod), attr, nn.Parameter(t))
                del t
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.reset_rope(device=device)
    return model.eval()


def save_model(model, path, dtype=None, max_shard_bytes=5 * 2 ** 30):
    """Write config.json and model.safetensors (or shards + index above max_shard_bytes) in HF's layout."""
    sd = {hf_key(k): v for k, v in model.state_dict().items()}
    save_hf_checkpoint(sd, model.args, path, dtype=dtype, max_shard_bytes=max_shard_bytes)


def checkpoint_files(path):
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index} is not a valid safetensors index ({e})") from None
        files = [path / name for name in dict.fromkeys(weight_map.values())]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        hint = f" (found {bins[0]}: convert it to safetensors first)" if bins else ""
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}{hint}")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint shard missing: {f}")
    return files


def save_hf_checkpoint(state_dict, args, path, dtype=None, max_shard_bytes=5 * 2 ** 30):
    """state_dict with HF keys -> path/config.json + model.safetensors (or shards + index). Each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if args.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}  # stored once, as HF does
    tensors = {k: v.detach().to(device="cpu", dtype=dtype or v.dtype).contiguous() for k, v in state_dict.items()}
    dtype = dtype or next(iter(tensors.values())).dtype
    shards, size = [[]], 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, keys in zip(names, shards):
        atomic_write(path / name, lambda tmp: save_file({k: tensors[k] for k in keys}, tmp, metadata={"format": "pt"}))
    index = path / "model.safetensors.index.json"
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        atomic_write(index, lambda tmp: tmp.write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)))
    # remove what an earlier save with a different sharding left behind, so the directory has one checkpoint
    for old in list(path.glob("model*.safetensors")) + ([index] if len(shards) == 1 else []):
        if old.name not in names and old.exists():
            old.unlink()
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(json.dumps(hf_config(args, dtype), indent=2) + "\n"))


# -----------------------------------------------------------------------------
# training checkpoints: out_dir/ckpt-NNNNNN/ holds the weights and the optimizer state as torch.distributed.checkpoint
# (DCP) files, every rank writing its own shard (.metadata + __<rank>_0.distcp; nothing is gathered on rank 0), beside
# config.json and the tokenizer (load_model reads such a directory) and train_state.pt (step, every rank's RNG,
# config, data fingerprint). Written as a hidden temp directory and renamed once whole, so a crash at any moment leaves
# the last checkpoint whole.

def list_checkpoints(out):
    return sorted(p for p in Path(out).glob("ckpt-[0-9]*") if p.is_dir() and (p / "train_state.pt").is_file())


def write_train_state(state, path):
    torch.save(state, path)


def free_bytes(path):
    """free bytes on the filesystem that holds path (or would: its nearest existing parent)"""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(path, needed, what, hint="", group=None):
    """Refuse, in one line, to write `needed` bytes where fewer are free (every rank alike: the least free space)"""
    free = free_bytes(path)
    if group is not None:
        t = torch.tensor([free], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
        free = int(t.item())
    if free < needed:
        raise DataError(f"not enough disk space for {what} in {path}: it needs {human_size(needed)}, "
                        f"{human_size(free)} free{hint}")


def human_size(n):
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def state_bytes(state):
    """Bytes of the tensors of a nested state dict, all ranks' shards together (a DTensor at its global size): what
    DCP writes, but for its per-tensor headers (a tied head, stored under both names, is counted twice: so is it)"""
    total, stack = 0, [state]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif torch.is_tensor(x):
            total += x.numel() * x.element_size()
    return total


def training_state(model, opt, weights_only):
    """{"model": ..., "optim": ...}: the state dicts DCP saves and loads, keyed by parameter name (whatever wraps the
    model: plain, DDP or FSDP2, so a run may resume on another number of GPUs); the model alone if weights_only"""
    sd = {"model": get_model_state_dict(model)}
    if not weights_only:
        sd["optim"] = get_optimizer_state_dict(model, opt)
    return sd


def load_weights(model, path):
    """The weights of training checkpoint `path` into model (plain or FSDP2-sharded: each rank reads its part)"""
    sd = get_model_state_dict(model)
    dcp.load({"model": sd}, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_model_state_dict(model, sd)


def load_optimizer(model, opt, path):
    """The optimizer state of training checkpoint `path` into opt. get_optimizer_state_dict first creates the state
    (one step at lr 0, which moves no weight) for DCP to load into."""
    sd = get_optimizer_state_dict(model, opt)
    dcp.load({"optim": sd}, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, opt, sd)


def empty_model(args, device, dtype):
    """Transformer(args) on device in dtype, its weights uninitialised (to be loaded), without a pass of random init"""
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to(dtype).to_empty(device=device)
    if args.tie_word_embeddings:  # to_empty gives every parameter its own storage: tie the head again
        model.lm_head.weight = model.embed_tokens.weight
    return model


def load_training_checkpoint(path, args, device="cpu", dtype=None):
    """load_model of a training checkpoint: the model built empty in the saved dtype, then its weights read"""
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model = empty_model(args, device, saved["model.embed_tokens.weight"].properties.dtype)
    load_weights(model, path)
    model = model.to(dtype) if dtype else model
    model.reset_rope(device=device)
    return model.eval()


# the base model's HF tokenizer files travel with the fine-tuned model, so transformers and lm-evaluation-harness load
# its tokenizer too (LLaMA 3 has no slow, tokenizer.model-based HF tokenizer)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer_path, base_dir, dst):
    """tokenizer.model and the base model's HF tokenizer files into dst, each atomically"""
    pairs = [(Path(tokenizer_path), "tokenizer.model")] + [(Path(base_dir) / name, name) for name in HF_TOKENIZER_FILES
                                                           if base_dir and (Path(base_dir) / name).is_file()]
    for src, name in pairs:
        atomic_write(Path(dst) / name, lambda tmp: shutil.copyfile(src, tmp))


def checkpoint(run, it, wait=False):
    """Save a resumable checkpoint of train.py's run after `it` steps, collectively: every rank writes its shard of the
    weights and the optimizer state (DCP), rank 0 the rest. With checkpoint_async the state is copied to host memory
    here and written by a background thread while training goes on; finish_checkpoint renames the checkpoint into
    place once it is whole (wait=True: now). Refused, in one line, when the disk cannot hold it."""
    finish_checkpoint(run, wait=True)  # one at a time: the previous one is renamed first
    model, opt, c = run["raw_model"], run["opt"], run["cfg"]
    out = Path(c["out_dir"])
    final, tmp = out / f"ckpt-{it:06d}", out / f".ckpt-{it:06d}.tmp"
    sd = training_state(model, opt, c["checkpoint_weights_only"])
    hint = "" if c["checkpoint_weights_only"] else (
        f" (checkpoint_weights_only=True would need {human_size(state_bytes(sd['model']))}, but cannot be resumed)")
    check_disk(out, state_bytes(sd), f"checkpoint {final.name}", hint, run.get("ckpt_group"))
    cuda = run["dev"].startswith("cuda")
    rng = {"torch": [torch.get_rng_state()], "cuda": [torch.cuda.get_rng_state()] if cuda else []}
    if run["world"] > 1:  # every rank's generator: dropout masks differ per rank
        gathered = [None] * run["world"]
        dist.all_gather_object(gathered, rng)
        rng = {k: [g[k][0] for g in gathered if g[k]] for k in rng}
    if run["master"]:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if run["world"] > 1:
        dist.barrier()
    state = {"iter": it, "rng": rng, "config": c, "global_batch": run["G"], "data_fingerprint": run["fingerprint"],
             "weights_only": c["checkpoint_weights_only"]}
    where = dict(checkpoint_id=str(tmp), process_group=run.get("ckpt_group"))  # None: no process group, one process
    run["pending"] = dict(future=None, tmp=tmp, final=final, state=state, it=it, need=state_bytes(sd))
    with disk_full_refused(run["pending"]):
        if c["checkpoint_async"]:
            result = dcp.async_save(sd, **where)
            run["pending"]["future"] = getattr(result, "upload_completion", result)  # newer torch: AsyncSaveResponse
        else:
            dcp.save(sd, **where, no_dist=run.get("ckpt_group") is None)
    future = run["pending"]["future"]
    if wait or future is None:
        finish_checkpoint(run, wait=True)
    return final


@contextmanager
def disk_full_refused(p):
    """A disk that fills while checkpoint p is written: its temp directory removed, one line naming it, the size it
    needs and the space free (the last checkpoint before it stays whole). Other errors pass, the directory removed."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError, DataError) as e:
        shutil.rmtree(p["tmp"], ignore_errors=True)
        if isinstance(e, DataError) or not disk_full(e):
            raise
        raise DataError(f"disk full while writing checkpoint {p['it']} to {p['tmp']}: it needs about {gb(p['need'])}, "
                        f"{gb(free_bytes(p['tmp']))} is free; the last checkpoint before it is whole, so free space "
                        f"and resume with --resume=True") from None


def finish_checkpoint(run, wait):
    """The pending checkpoint, once every rank's shard is written (rank 0's save completes only after all ranks'
    writes), renamed into place by rank 0 with its train_state.pt, config.json and tokenizer; older ones beyond
    keep_checkpoints removed. wait=False returns at once if the writing is still going on."""
    p = run.get("pending")
    if p is None or (not wait and p["future"] is not None and not p["future"].done()):
        return
    run["pending"] = None
    with disk_full_refused(p):
        if p["future"] is not None:
            p["future"].result()  # a failed write raises here
        if not run["master"]:
            return
        c, model, tmp, final, out = run["cfg"], run["raw_model"], p["tmp"], p["final"], Path(run["cfg"]["out_dir"])
        dtype = next(model.parameters()).dtype
        atomic_write(tmp / "config.json", lambda f: f.write_text(json.dumps(hf_config(model.args, dtype), indent=2) + "\n"))
        copy_tokenizer(run["tok_path"], c["init_from"], tmp)
        write_train_state(p["state"], tmp / "train_state.pt")
        for f in tmp.iterdir():  # DCP fsyncs its files; make sure of all of them before the rename
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(out)
    for old in list_checkpoints(out)[:-c["keep_checkpoints"]]:
        shutil.rmtree(old)


def export_final(run):
    """out_dir itself becomes the fine-tuned HF model directory: the weights (under FSDP2 gathered into rank 0's
    host memory, in their own dtype) as HF safetensors and the tokenizer, each file replaced atomically. config.json
    comes last, so its presence in out_dir means the export is complete (sweep.py relies on that). Collective."""
    model, c = run["raw_model"], run["cfg"]
    if run["fsdp"]:
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = model.state_dict()
    if run["master"]:
        out = Path(c["out_dir"])
        (out / "config.json").unlink(missing_ok=True)
        copy_tokenizer(run["tok_path"], c["init_from"], out)
        save_hf_checkpoint({hf_key(k): v for k, v in sd.items()}, model.args, out)  # writes config.json last
        fsync_dir(out)
    if run["world"] > 1:
        dist.barrier()


def claim_run_dir(c):
    """Refuse an out_dir that cannot hold this run, before any long work: not a directory, not writable, another
    run (unless resume/overwrite), or a model that is not a nanoPLW run (never touched). Returns its checkpoints."""
    out = Path(c["out_dir"])
    if out.exists() and not out.is_dir():
        raise DataError(f"out_dir {out} exists and is not a directory")
    created = [p for p in [out, *out.parents] if not p.exists()]  # deepest first: removed again after the probe
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"out_dir {out} is not writable: {e.strerror or e}") from None
    finally:
        for p in created:
            if p.is_dir():
                p.rmdir()  # empty: only the probe was ever in it
    ckpts = list_checkpoints(out) if out.is_dir() else []
    ours = [out / "run_config.json", out / "log.jsonl"] + ckpts
    found = [p.name for p in [out / "config.json", out / "tokenizer.model", *out.glob("model*.safetensors*")]
             if p.exists()]
    if found and not (out / "run_config.json").exists():  # e.g. out_dir = the base model: never touch it
        raise DataError(f"{out} holds a model that is not a nanoPLW run ({', '.join(found)}): choose another out_dir")
    if c["resume"] and not ckpts:
        raise DataError(f"--resume=True but {out} holds no checkpoint to resume from")
    if not c["resume"] and any(p.exists() for p in ours) and not c["overwrite"]:
        raise DataError(f"{out} already holds a run: pass --resume=True to continue it or --overwrite=True to "
                          f"start over in it")
    return ckpts


def clear_run_dir(out):
    """--overwrite: nothing of the old run may pass for the new one, its exported model neither"""
    for p in [out / "run_config.json", out / "log.jsonl", *list_checkpoints(out), out / "config.json",
              out / "tokenizer.model", *out.glob("model*.safetensors*"), *(out / f for f in HF_TOKENIZER_FILES)]:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def open_log(out, start, resume):
    """log.jsonl for appending; on resume, cut to what was logged up to the checkpoint (a kill mid-append can leave
    a torn last line)"""
    log_path = Path(out) / "log.jsonl"
    if resume and log_path.exists():
        def logged_before(line):
            try:
                return json.loads(line)["iter"] <= start
            except (json.JSONDecodeError, KeyError, TypeError):
                return False
        keep = [l for l in log_path.read_text().splitlines() if logged_before(l)]
        atomic_write(log_path, lambda tmp: Path(tmp).write_text("".join(l + "\n" for l in keep)))
    return Log(log_path)


class Log:
    """log.jsonl, appended to: a write that fails (a full disk says only "No space left on device") is one line
    naming the file and what to do"""
    def __init__(self, path):
        self.path, self.f = path, open(path, "a")

    def write(self, text):
        self._checked(self.f.write, text)

    def flush(self):
        self._checked(self.f.flush)

    def close(self):
        self.f.close()

    def _checked(self, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            what = "disk full" if disk_full(e) else e.strerror or str(e)
            raise DataError(f"cannot write {self.path} ({what}): the last checkpoint is whole; free space and resume "
                            f"with --resume=True") from None


def damaged(ckpts, what):
    """The one-line refusal for the last checkpoint being unreadable: which one, and what to do instead"""
    last = ckpts[-1]
    step = int(last.name.removeprefix("ckpt-"))
    earlier = (f"resume from checkpoint {int(ckpts[-2].name.removeprefix('ckpt-'))} (move {last} away first) or "
               if len(ckpts) > 1 else "")
    return DataError(f"checkpoint {step} ({last}) is damaged: {what}; {earlier}start over with --overwrite=True")


def check_checkpoint(ckpts):
    """Refuse, before any long work, a last checkpoint that cannot be resumed: one in the format before
    torch.distributed.checkpoint, or one whose files are cut short (a full disk, a killed copy): the zip archive of
    train_state.pt must cover its file, and every shard DCP's metadata lists must hold the bytes it points at. Cheap:
    it reads the archive's directory and the metadata, not the data."""
    last = ckpts[-1]
    if not (last / ".metadata").is_file():
        if (last / "train_state.pt").is_file() and (last / "model.safetensors").is_file():
            raise DataError(f"cannot resume from {last}: it is in the format before torch.distributed.checkpoint (HF "
                            f"weights + train_state.pt); finish that run with the nanoPLW that started it, or start "
                            f"over with --overwrite=True")
        raise damaged(ckpts, "its DCP metadata (.metadata) is missing")
    state = last / "train_state.pt"
    try:
        size = state.stat().st_size
        with zipfile.ZipFile(state) as z:  # torch.save writes a zip archive: a cut file has no central directory
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(f"{info.filename} runs past the end of the file")
    except (OSError, zipfile.BadZipFile) as e:
        raise damaged(ckpts, f"{state.name} is not whole ({e})") from None
    try:
        meta = dcp.FileSystemReader(str(last)).read_metadata()
        for info in meta.storage_data.values():
            f = last / info.relative_path
            if f.stat().st_size < info.offset + info.length:
                raise ValueError(f"{info.relative_path} is shorter than its metadata says")
    except (OSError, ValueError, EOFError, RuntimeError) as e:
        raise damaged(ckpts, f"its weights or optimizer state are not whole ({e})") from None


def resume_state(c, ckpts, G, fingerprint, defaults, resumable):
    """The last checkpoint's training state; refused if the run was started with settings that change the update."""
    try:
        state = torch.load(ckpts[-1] / "train_state.pt", map_location="cpu", weights_only=False, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise damaged(ckpts, f"train_state.pt cannot be read ({e})") from None
    if state.get("weights_only"):
        raise DataError(f"cannot resume {c['out_dir']}: its last checkpoint {ckpts[-1].name} holds the weights only "
                        f"(checkpoint_weights_only=True), not the optimizer state")
    was = {**defaults, **state["config"]}  # a key added since the run started had its default then
    changed = [f"{k}: {was[k]!r} -> {c[k]!r}" for k in c if k not in resumable and was[k] != c[k]]
    if state["global_batch"] != G:
        changed.append(f"global batch size: {state['global_batch']} -> {G}")
    if state["data_fingerprint"] != fingerprint:
        changed.append(f"training data: fingerprint {state['data_fingerprint']} -> {fingerprint}")
    if changed:
        raise DataError(f"cannot resume {c['out_dir']}: the run was started with different settings "
                          f"({'; '.join(changed)})")
    return state
