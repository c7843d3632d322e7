"""train.py: the PLW loss against independent computations, split invariance of one update, resume, outputs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, STORIES, ALPACA, require
import train
from data.batch import collate, example_targets, split_micro_batches, step_examples, target_counts
from data.prepare import load_records, tokenize, select, PROMPT, COMPLETION, TEXT
from optim import AdamWBF16, stochastic_round_bf16
import checkpoint
from checkpoint import load_model
from tokenizer import Tokenizer
from config import ConfigError, load_config

SAMPLE = ROOT / "data" / "samples" / "alpaca_2k.json"
FAULTS = "tests/fault_train.py"  # train.py with injected faults (a NaN loss, a kill mid-checkpoint)
TINY = ["configs/tiny_stories.py", "--max_seq_len=256", "--learning_rate=1e-2", "--warmup_iters=0"]


@pytest.fixture(scope="module")
def records():
    return load_records(SAMPLE)[:64]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("data") / "alpaca64.json"
    path.write_text(json.dumps(records))
    return path


def run_train(*args, env=None, torchrun=0, check=True):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun
           else [sys.executable]) + [FAULTS if any(k.startswith("NANOPLW_FAULT") for k in env or {}) else "train.py",
                                     *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def weights(path):
    from safetensors.torch import load_file
    return load_file(path / "model.safetensors")


def log_rows(path):
    return [json.loads(l) for l in (path / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ the loss itself

def batch(records, plw, n=6):
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records[:n], tok), np.arange(n), max_seq_len=200)
    return collate(data, np.arange(n), plw)


@pytest.mark.parametrize("plw", [0.0, 1.0, 0.1])
def test_plw_loss_equals_independent_computation(records, plw):
    transformers = pytest.importorskip("transformers")
    x, y, w, r = batch(records, plw)
    p = r == PROMPT  # the prompt targets
    ours = load_model(STORIES)
    hf = transformers.LlamaForCausalLM.from_pretrained(STORIES).float().eval()
    full = torch.cat([x[:, :1], y.clamp(min=0)], 1)  # each row's whole sequence: inputs + the last target
    with torch.no_grad():
        loss = ((ours(x, y) * w).sum() / w.sum()).item()
        if plw in (0.0, 1.0):
            # PLW=0 is Stanford Alpaca's masking (prompt labels IGNORE_INDEX), PLW=1 the plain LM loss: HF's own
            # `labels=` loss (it shifts labels itself) over exactly the same targets
            keep = (y >= 0) & ~p if plw == 0.0 else (y >= 0)
            labels = torch.cat([torch.full_like(y[:, :1], -100), torch.where(keep, y, -100)], 1)
            ref = hf(full, labels=labels).loss.item()
        else:
            logits = hf(full).logits[:, :-1]
            ce = F.cross_entropy(logits.reshape(-1, 512), y.clamp(min=0).reshape(-1), reduction="none").view(y.shape)
            real = y >= 0
            ref = ((plw * ce[p & real].sum() + ce[~p & real].sum()) / (plw * (p & real).sum() + (~p & real).sum())).item()
    assert abs(loss - ref) < 1e-5 * abs(ref)


def test_label_smoothing_inside_the_weighting(records):
    x, y, w, _ = batch(records, 0.1)
    m = load_model(STORIES)
    with torch.no_grad():
        ours = (m(x, y, label_smoothing=0.1) * w).sum() / w.sum()
        logits = m(x)
        ref = F.cross_entropy(logits.reshape(-1, 512), y.reshape(-1), ignore_index=-1, reduction="none",
                              label_smoothing=0.1).view(y.shape)
        ref = (ref * w).sum() / w.sum()
    assert abs(ours.item() - ref.item()) < 1e-5 * ref.item()


def test_collate_roles_weights_and_targets():
    # three hand-built examples: [BOS p p c c EOS], [BOS p c EOS] and a plain-text record [BOS t t EOS]
    data = {"tokens": np.array([1, 10, 11, 20, 21, 2, 1, 12, 22, 2, 1, 30, 31, 2], dtype=np.int32),
            "roles": np.array([PROMPT, PROMPT, PROMPT, COMPLETION, COMPLETION, COMPLETION, PROMPT, PROMPT, COMPLETION,
                               COMPLETION, PROMPT, TEXT, TEXT, TEXT], dtype=np.uint8),
            "offsets": np.array([0, 6, 10, 14])}
    x, y, w, r = collate(data, np.array([0, 1, 2]), 0.25, text_weight=0.5)
    assert x.tolist() == [[1, 10, 11, 20, 21], [1, 12, 22, 0, 0], [1, 30, 31, 0, 0]]
    assert y.tolist() == [[10, 11, 20, 21, 2], [12, 22, 2, -1, -1], [30, 31, 2, -1, -1]]  # BOS never a target, EOS always
    assert w.tolist() == [[0.25, 0.25, 1, 1, 1], [0.25, 1, 1, 0, 0], [0.5, 0.5, 0.5, 0, 0]]
    assert r.tolist() == [[PROMPT, PROMPT, COMPLETION, COMPLETION, COMPLETION], [PROMPT, COMPLETION, COMPLETION, 3, 3],
                          [TEXT, TEXT, TEXT, 3, 3]]
    assert target_counts(data, np.array([0, 1])) == (8, 3)
    n_t, n_p, n_x = example_targets(data, np.array([0, 1, 2]))
    assert (n_t.tolist(), n_p.tolist(), n_x.tolist()) == ([5, 3, 3], [2, 1, 0], [0, 0, 3])
    sw, nz = train.example_weights(n_t, n_p, n_x, 0.0, 0.5)
    assert sw.tolist() == [3, 2, 1.5] and nz.tolist() == [3, 2, 3]
    assert train.example_weights(n_t, n_p, n_x, 0.1, 0.0)[1].tolist() == [5, 3, 0]


def test_plain_text_records_are_prepared_as_language_model_data():
    tok = Tokenizer(STORIES / "tokenizer.model")
    data = tokenize([{"instruction": "Say hi.", "input": "", "output": "Hi."}, {"text": "Once upon a time."}], tok)
    o, roles = data["offsets"], data["roles"]
    text = data["tokens"][o[1]:o[2]].tolist()
    assert text == [tok.bos_id] + tok.encode("Once upon a time.") + [tok.eos_id]
    assert roles[o[1]] == PROMPT and (roles[o[1] + 1:o[2]] == TEXT).all()  # BOS (never a target), then text
    assert set(roles[o[0]:o[1]].tolist()) == {PROMPT, COMPLETION}


def test_step_order_depends_only_on_seed_and_global_batch():
    a = [step_examples(it, 100, 16, 7) for it in range(12)]
    assert all(len(s) == 16 for s in a)
    assert len(set(np.concatenate(a[:6]).tolist())) == 96  # an epoch never repeats an example (6 steps x 16)
    assert not np.array_equal(a[0], a[6])  # each epoch is reshuffled
    assert all(np.array_equal(s, step_examples(it, 100, 16, 7)) for it, s in enumerate(a))
    lengths = np.random.default_rng(0).integers(5, 50, 100)
    micro = split_micro_batches(a[0], lengths, 4, 4)
    assert sorted(np.concatenate(micro).tolist()) == sorted(a[0].tolist())
    assert [lengths[m].max() for m in micro] == sorted([lengths[m].max() for m in micro], reverse=True)


def test_lr_schedule():
    c = {"learning_rate": 1.0, "min_lr": 0.1, "decay_lr": True}
    lrs = [train.get_lr(it, 100, 10, c) for it in range(100)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    c["decay_lr"] = False
    assert train.get_lr(50, 100, 10, c) == 1.0


# ------------------------------------------------------------------------------------------------ one update

PLW = 0.1


def reference_gradient(records, plw, ids, max_seq_len=256):
    """An independent computation of the global batch's loss gradient: one example at a time (no padding, no
    collate), full logits, F.cross_entropy, prompt tokens counted as Stanford counted them (independent_gradient
    below, with the global normalisation)."""
    return independent_gradient(records, plw, ids, "global", max_seq_len=max_seq_len)


def split_gradient(data, ids, plw, batch_size, accum, normalise="global"):
    """the gradient as train.py forms it from its building blocks (normalise='micro' is a deliberately wrong
    variant: each micro-batch's own weighted mean, averaged, as a naive accumulation loop would do)"""
    m = load_model(STORIES).train()
    n_targets, n_prompt = target_counts(data, ids)
    W = plw * n_prompt + (n_targets - n_prompt)
    for mb in split_micro_batches(ids, np.diff(data["offsets"]), batch_size, accum):
        x, y, w, _ = collate(data, mb, plw)
        ce = m(x, y)
        ((ce * w).sum() / (W if normalise == "global" else w.sum() * accum)).backward()
    return {k: p.grad for k, p in m.named_parameters()}


def test_gradient_of_a_global_batch_is_the_same_for_any_split(records):
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records, tok), np.arange(len(records)), 256)
    ids = step_examples(0, len(records), 8, 1337)
    ref = reference_gradient(records, PLW, ids)
    scale = max(g.abs().max().item() for g in ref.values())
    for bs, accum in [(8, 1), (4, 2), (2, 4), (1, 8)]:
        g = split_gradient(data, ids, PLW, bs, accum)
        err = max((g[k] - ref[k]).abs().max().item() for k in ref)
        assert err <= 1e-6 * scale, (bs, accum, err, scale)
    wrong = split_gradient(data, ids, PLW, 2, 4, normalise="micro")
    assert max((wrong[k] - ref[k]).abs().max().item() for k in ref) > 1e-3 * scale  # the test can tell


def test_update_is_the_same_for_any_split_of_the_global_batch(tmp_path, records, data_file):
    # one optimizer step of train.py itself, split four ways; lr 2e-5 as in the paper. AdamW's first step moves
    # each weight by about lr * sign(gradient), so a wrong gradient direction shows up as 2e-5-sized differences
    # global_batch_size=8 throughout: the accumulation follows from batch_size and the number of ranks (1, 2, 4)
    common = [*TINY, f"--dataset={data_file}", "--max_iters=1", f"--prompt_loss_weight={PLW}", "--learning_rate=2e-5",
              "--global_batch_size=8"]
    runs = {"8x1": dict(args=["--batch_size=8"], accum=1),
            "2x4": dict(args=["--batch_size=2"], accum=4),
            "ddp2x4": dict(args=["--batch_size=4"], torchrun=2, accum=1),
            "ddp4x1x2": dict(args=["--batch_size=1"], torchrun=4, accum=2),
            # FSDP2: two steps, both checkpointed (sharded: a file per rank), the first compared here, then resumed
            "fsdp2x2x2": dict(args=["--batch_size=2", "--parallel=fsdp", "--max_iters=2", "--checkpoint_interval=1",
                                    "--keep_checkpoints=2"], torchrun=2, accum=2)}
    for name, r in runs.items():
        run_train(*common, *r["args"], f"--out_dir={tmp_path / name}", torchrun=r.get("torchrun", 0))
        cfg = json.loads((tmp_path / name / "run_config.json").read_text())
        assert (cfg["global_batch"], cfg["accumulation"], cfg["world_size"]) == (8, r["accum"], r.get("torchrun") or 1)

    # the expected weights: the reference gradient, clipped to norm 1, through one torch AdamW step
    ids = step_examples(0, len(records), 8, 1337)
    ref_grad = reference_gradient(records, PLW, ids)
    m = load_model(STORIES)
    norm = torch.nn.utils.get_total_norm(list(ref_grad.values())).item()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-5, weight_decay=0.0)
    for k, p in m.named_parameters():
        p.grad = ref_grad[k] * min(1.0, 1.0 / (norm + 1e-6))
    opt.step()
    expected = {("" if k == "lm_head.weight" else "model.") + k: v for k, v in m.state_dict().items()}
    expected.pop("lm_head.weight")  # tied to the embedding, stored once
    # AdamW's first step is lr * g / (|g| + eps): where |g| is within ~100x of eps = 1e-8 its derivative lr * eps /
    # (|g| + eps)^2 amplifies fp32 summation-order differences (which differ between CPU kernels) a thousandfold. Those
    # few weights are held to the bound of one step (lr); all others to 1e-6
    clipped = {("" if k == "lm_head.weight" else "model.") + k: (g * min(1.0, 1.0 / (norm + 1e-6))).abs()
               for k, g in ref_grad.items()}
    steep = {k: (clipped[k] > 0) & (clipped[k] < 1e-6) for k in expected}  # a zero gradient leaves the weight as is
    assert sum(int(v.sum()) for v in steep.values()) < 0.1 * sum(v.numel() for v in steep.values())

    base_log = log_rows(tmp_path / "8x1")[0]
    assert base_log["grad_norm"] == pytest.approx(norm, rel=1e-5)
    for name in runs:
        w = weights(tmp_path / name) if name != "fsdp2x2x2" else {
            checkpoint.hf_key(k): v for k, v in load_model(tmp_path / name / "ckpt-000001").state_dict().items()
            if k != "lm_head.weight"}
        assert w.keys() == expected.keys()
        err = max((w[k] - expected[k]).abs()[~steep[k]].max().item() for k in expected)
        assert err <= 1e-6, (name, err)
        assert max((w[k] - expected[k]).abs().max().item() for k in expected) <= 2e-5, name
        row = log_rows(tmp_path / name)[0]
        for key in ("loss", "loss_nonzero", "prompt_loss", "completion_loss", "grad_norm"):
            assert row[key] == pytest.approx(base_log[key], rel=1e-6), (name, key)
        assert row["tokens"] == base_log["tokens"]
    # the per-micro-batch losses are over HF's micro-batches of batch_size rows: equal for equal batch_size
    a, b = log_rows(tmp_path / "2x4")[0], log_rows(tmp_path / "fsdp2x2x2")[0]
    for key in ("loss_micro_mean", "loss_hf"):
        assert a[key] == pytest.approx(b[key], rel=1e-6) and a[key] != pytest.approx(base_log[key], rel=1e-3), key
    moved = max((weights(tmp_path / "8x1")[k] - weights(STORIES)[k]).abs().max().item() for k in expected)
    assert moved > 1e-5  # the step is 20x the tolerance

    # the FSDP2 run's checkpoints: each rank wrote its own shard; resumed on two ranks from step 1, the second step
    # is bit for bit the uninterrupted run's
    fsdp = tmp_path / "fsdp2x2x2"
    assert {p.name for p in (fsdp / "ckpt-000001").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    two_steps, log = weights(fsdp), log_rows(fsdp)
    shutil.rmtree(fsdp / "ckpt-000002")
    run_train(*common, *runs["fsdp2x2x2"]["args"], f"--out_dir={fsdp}", "--resume=True", torchrun=2)
    assert all(torch.equal(v, weights(fsdp)[k]) for k, v in two_steps.items())
    assert log_rows(fsdp) == log[:1] + [dict(log[1], tokens_per_s=log_rows(fsdp)[1]["tokens_per_s"])]


def test_resume_after_sigterm_equals_uninterrupted_run(tmp_path, data_file):
    args = [*TINY, f"--dataset={data_file}", "--max_iters=8", "--batch_size=4", "--global_batch_size=8",
            "--dropout=0.1"]  # dropout: the RNG state must be restored too
    run_train(*args, f"--out_dir={tmp_path / 'a'}")
    b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "train.py", *args, f"--out_dir={b}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ((b / "log.jsonl").exists() and len((b / "log.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err and "--resume=True" in err
    stopped = train.list_checkpoints(b)[-1]
    assert 3 <= int(stopped.name.split("-")[1]) < 8
    run_train(*args, f"--out_dir={b}", "--resume=True")
    wa, wb = weights(tmp_path / "a"), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
    assert [r["iter"] for r in log_rows(b)] == list(range(1, 9))
    assert [r["loss"] for r in log_rows(b)] == [r["loss"] for r in log_rows(tmp_path / "a")]


def test_disk_check_and_weights_only_checkpoints(tmp_path, data_file):
    import re
    args = [*TINY, f"--dataset={data_file}", "--max_iters=3", "--checkpoint_interval=1"]
    # before any long work: can the disk hold the run's checkpoints and export? (the free space faked: a test seam)
    r = run_train(*args, f"--out_dir={tmp_path / 'a'}", env={"NANOPLW_FAULT_FREE_BYTES": "1000"}, check=False)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.fullmatch(r"train.py: error: not enough disk space for this run's checkpoints \([0-9.]+ MB each, "
                        r"keep_checkpoints=1\) and its exported model in \S+: it needs [0-9.]+ MB, 0.0 MB free", last)
    assert not (tmp_path / "a").exists()  # nothing written
    # before each checkpoint: weights-only checkpoints, room for the run and the first save, then a full disk
    b = tmp_path / "b"
    r = run_train(*args, f"--out_dir={b}", "--checkpoint_weights_only=True", check=False,
                  env={"NANOPLW_FAULT_FREE_BYTES": "1e12,1e12,0"})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.fullmatch(r"train.py: error: not enough disk space for checkpoint ckpt-000002 in \S+: it needs "
                        r"[0-9.]+ MB, 0.0 MB free", last), last
    (ckpt,) = train.list_checkpoints(b)
    assert ckpt.name == "ckpt-000001" and not list(b.glob(".ckpt-*"))
    # a weights-only checkpoint: DCP files of the weights alone (load_model reads them), no optimizer state
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    assert keys and all(k.startswith("model.") for k in keys)
    weights_bytes = sum(v.numel() * 4 for v in weights(STORIES).values())
    assert (ckpt / "__0_0.distcp").stat().st_size < 1.3 * weights_bytes
    assert not torch.equal(load_model(ckpt).lm_head.weight, load_model(STORIES).lm_head.weight)  # it trained a step
    r = run_train(*args, f"--out_dir={b}", "--resume=True", check=False)
    assert r.returncode == 1 and "holds the weights only (checkpoint_weights_only=True)" in r.stderr


def test_output_loads_in_transformers_and_loss_falls(tmp_path, data_file):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "run"
    run_train(*TINY, f"--dataset={data_file}", "--epochs=3.0", "--learning_rate=3e-3", f"--out_dir={out}")
    assert {"config.json", "model.safetensors", "tokenizer.model", "log.jsonl", "run_config.json"} <= {
        p.name for p in out.iterdir()}
    losses = [r["completion_loss"] for r in log_rows(out)]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    hf = transformers.LlamaForCausalLM.from_pretrained(out).float().eval()
    ours = load_model(out)
    idx = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert ((hf(idx).logits - ours(idx)).abs().max() / ours(idx).abs().max()).item() < 1e-5


def test_nan_stops_with_a_loadable_checkpoint(tmp_path, data_file):
    out = tmp_path / "nan"
    r = run_train(*TINY, f"--dataset={data_file}", "--max_iters=5", f"--out_dir={out}",
                  env={"NANOPLW_FAULT_NAN_ITER": "2"}, check=False)
    assert r.returncode == 3 and "non-finite loss/gradient at iter 3" in r.stderr and "Traceback" not in r.stderr
    ckpt = train.list_checkpoints(out)[-1]
    assert ckpt.name == "ckpt-000002"
    m = load_model(ckpt)
    assert all(torch.isfinite(p).all() for p in m.parameters())
    r = run_train(*TINY, f"--dataset={data_file}", "--max_iters=5", f"--out_dir={tmp_path / 'skip'}",
                  "--on_nonfinite=skip", env={"NANOPLW_FAULT_NAN_ITER": "2"})
    assert "iter 3 skipped" in r.stderr and len(log_rows(tmp_path / "skip")) == 5


def load_train_config(argv):
    cfg = load_config(train.DEFAULTS, argv, ignore=("sweep_",))
    train.check_config(cfg)
    return cfg


@pytest.mark.parametrize("args, message", [
    (["--prompt_loss_weight=-0.1"], "prompt_loss_weight must be >= 0, got -0.1"),
    (["--promt_loss_weight=0.1"], "unknown config key 'promt_loss_weight' in --promt_loss_weight=0.1 (did you mean 'prompt_loss_weight'?)"),
    (["--batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--batch_size=2.5"], "batch_size must be a int, got 2.5"),
    (["--learning_rate=-1e-5"], "learning_rate must be >= 0"),
    (["--min_lr=1.0"], "min_lr must be in [0, learning_rate]"),
    (["--compile=yes"], "compile must be a bool, got 'yes'"),
    (["--dtype=float16"], "dtype must be float32 or bfloat16"),
    (["--label_smoothing=1.0"], "label_smoothing must be in [0, 1)"),
    (["--max_iters=0", "--epochs=0"], "epochs must be > 0"),
    (["--init_from="], "init_from is empty"),
    (["configs/nope.py"], "config file not found: configs/nope.py"),
    (["--max_iters"], "--max_iters needs a value: --max_iters=VALUE or --max_iters VALUE"),
    (["--max_iters", "--resume"], "--max_iters needs a value"),
])
def test_bad_config_is_refused(args, message):
    # the one-line, exit-code and no-traceback side is in tests/test_reliability.py
    with pytest.raises(ConfigError) as e:
        load_train_config(["configs/tiny_stories.py", *args])
    assert message in str(e.value)


def test_global_batch_size_fixes_the_global_batch_on_any_number_of_gpus():
    c = {"batch_size": 4, "global_batch_size": 128, "gradient_accumulation_steps": 0, "tokens_per_micro_batch": 0}
    assert [train.global_batch(c, world) for world in (1, 2, 4, 8)] == [(128, 32), (128, 16), (128, 8), (128, 4)]
    assert train.global_batch({**c, "gradient_accumulation_steps": 8}, 4) == (128, 8)  # set, and consistent
    assert train.global_batch({**c, "global_batch_size": 0, "gradient_accumulation_steps": 32}, 4) == (512, 32)
    with pytest.raises(ConfigError, match=r"batch_size 4 x gradient_accumulation_steps 32 x 4 GPU\(s\) = 512, but "
                                          r"global_batch_size is 128"):
        train.global_batch({**c, "gradient_accumulation_steps": 32}, 4)
    with pytest.raises(ConfigError, match=r"global_batch_size 128 is not divisible by batch_size 3 x 2 GPU\(s\) = 6: "
                                          r"choose a batch_size that divides 64 \(1, 2, 4, 8, 16, 32, 64\)"):
        train.global_batch({**c, "batch_size": 3}, 2)
    with pytest.raises(ConfigError, match="choose a number of GPUs that divides 128"):
        train.global_batch(c, 3)
    assert train.global_batch({**c, "batch_size": 3, "tokens_per_micro_batch": 4096}, 3)[0] == 128  # cut by tokens
    with pytest.raises(ConfigError, match="global_batch_size and gradient_accumulation_steps are both 0"):
        load_train_config(["configs/tiny_stories.py", "--global_batch_size=0"])


def test_indivisible_global_batch_is_refused_in_one_line_before_any_work(tmp_path, data_file):
    r = run_train(*TINY, f"--dataset={data_file}", "--batch_size=3", f"--out_dir={tmp_path / 'o'}", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("global_batch_size 16 is not divisible by batch_size 3 x 1 "
                                                      "GPU(s) = 3: choose a batch_size that divides 16 (1, 2, 4, 8, 16)")
    assert not (tmp_path / "o").exists()


def test_config_files_stack_and_overrides_win():
    cfg = load_train_config(["configs/short_plw01.py", "configs/reg_dropout.py", "--dropout=0.2", "--out_dir=x/y"])
    assert cfg["dropout"] == 0.2 and cfg["prompt_loss_weight"] == 0.0 and cfg["out_dir"] == "x/y"
    assert cfg["learning_rate"] == 2e-5 and cfg["global_batch_size"] == 128  # from the base recipe
    assert load_train_config(["configs/tiny_sweep.py"])["max_iters"] == 20  # its sweep_* names are not train's


def test_short_plw01_without_weights_says_where_to_put_them():
    r = run_train("configs/short_plw01.py", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "models/Llama-2-7b-hf" in r.stderr and "--init_from=" in r.stderr and "meta-llama/Llama-2-7b-hf" in r.stderr


def test_out_dir_of_another_run_and_resume_checks(tmp_path, data_file):
    out = tmp_path / "run"
    args = [*TINY, f"--dataset={data_file}", "--max_iters=2", f"--out_dir={out}"]
    r = run_train(*args, "--resume=True", check=False)
    assert r.returncode == 1 and "holds no checkpoint to resume from" in r.stderr
    run_train(*args)
    r = run_train(*args, check=False)
    assert r.returncode == 1 and "already holds a run" in r.stderr
    r = run_train(*args, "--resume=True", "--global_batch_size=32", check=False)
    assert r.returncode == 1 and "global batch size: 16 -> 32" in r.stderr
    r = run_train(*args, "--resume=True", "--prompt_loss_weight=0.5", check=False)
    assert r.returncode == 1 and "prompt_loss_weight: 0.1 -> 0.5" in r.stderr
    other = tmp_path / "other.json"  # the same name's content changed: caught by the data fingerprint
    other.write_text(json.dumps(json.loads(data_file.read_text())[::-1]))
    r = run_train(*args, "--resume=True", f"--dataset={other}", check=False)
    assert r.returncode == 1 and f"dataset: '{data_file}' -> '{other}'" in r.stderr
    assert "training data: fingerprint" in r.stderr
    run_train(*args, "--overwrite=True")


# ------------------------------------------------------------------------------------------------ bf16 AdamW

def bf16_neighbours(x):
    """the bf16 values just below and above each fp32 value (equal when x is a bf16 value)"""
    down = (x.view(torch.int32) & -65536).view(torch.float32)  # truncation: toward zero
    up = torch.nextafter(down.bfloat16(), torch.sign(x).bfloat16() * float("inf")).float()
    exact = down == x
    lo, hi = torch.where(x >= 0, down, up), torch.where(x >= 0, up, down)
    return torch.where(exact, x, lo), torch.where(exact, x, hi)


def test_stochastic_rounding_is_unbiased_and_stays_between_neighbours():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.logspace(-6, 2, 1000)
    lo, hi = bf16_neighbours(x)
    torch.manual_seed(1)
    draws = torch.stack([stochastic_round_bf16(x).float() for _ in range(4000)])   # (4000, 1000)
    assert ((draws == lo) | (draws == hi)).all()
    # the fraction rounded up is the distance from the lower neighbour: E[round(x)] = x, within 5 sigma
    p_up = torch.where(hi > lo, (x - lo) / (hi - lo), torch.zeros_like(x))
    frac = (draws == hi).float().mean(0)
    assert ((frac - p_up).abs() <= 5 * (p_up * (1 - p_up) / 4000).sqrt() + 1e-3).all()
    v = torch.tensor([1.0, -2.5, 0.0, 2.0 ** 120, -(2.0 ** -100)])  # bf16 values come back unchanged
    assert torch.equal(stochastic_round_bf16(v).float(), v)


def test_adamw_bf16_step_is_torch_adamw_rounded():
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(64, 32, generator=g) * 0.05).bfloat16()
    grads = [torch.randn(64, 32, generator=g).bfloat16() for _ in range(3)]
    ref = w0.float().clone().requires_grad_()
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    p = torch.nn.Parameter(w0.clone())
    opt = AdamWBF16([p], lr=1e-2, weight_decay=0.1)
    for k, gr in enumerate(grads):
        ref.grad, p.grad = gr.float(), gr.clone()
        ref_opt.step()
        opt.step()
        if k == 0:  # after one step from the same point, each weight is the fp32 result rounded down or up
            lo, hi = bf16_neighbours(ref.detach())
            assert ((p.float() == lo) | (p.float() == hi)).all()
    # three steps later: each step's rounding moves a weight by less than one bf16 spacing, and the bf16-stored
    # moments change m/sqrt(v) (each update's size ~ lr) by a relative 2^-8 at most, so per weight the gap is
    # below 3 spacings + 3 * 2 * 2^-8 * lr
    lo, hi = bf16_neighbours(ref.detach().abs() * (1 + 2 ** -9))
    spacing = hi - lo
    assert ((p.float() - ref).abs() <= 3 * spacing + 3 * 2 * 2 ** -8 * 1e-2).all()


def test_adamw_bf16_run_resumes_exactly(tmp_path, data_file):
    # the random rounding draws from the checkpointed RNG, so a resumed run is still bit-identical
    args = [*TINY, f"--dataset={data_file}", "--max_iters=4", "--optimizer=adamw_bf16", "--dtype=bfloat16",
            "--checkpoint_interval=2", "--learning_rate=2e-5"]
    run_train(*args, f"--out_dir={tmp_path / 'a'}")
    r = run_train(*args, f"--out_dir={tmp_path / 'b'}", env={"NANOPLW_FAULT_KILL_CKPT": "4"}, check=False)
    assert r.returncode == -9 and [c.name for c in train.list_checkpoints(tmp_path / "b")] == ["ckpt-000002"]
    run_train(*args, f"--out_dir={tmp_path / 'b'}", "--resume=True")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(v.dtype == torch.bfloat16 for v in wa.values())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], weights(STORIES)[k].bfloat16()) for k in wa)  # it moved


def test_out_dir_holding_a_foreign_model_is_never_touched(tmp_path):
    import shutil
    foreign = tmp_path / "base"
    shutil.copytree(STORIES, foreign)
    before = {p.name: p.read_bytes() for p in foreign.iterdir()}
    for extra in ([], ["--overwrite=True"]):
        r = run_train(*TINY, f"--out_dir={foreign}", "--max_iters=1", *extra, check=False)
        assert r.returncode == 1 and "holds a model that is not a nanoPLW run" in r.stderr
    assert {p.name: p.read_bytes() for p in foreign.iterdir()} == before


# ------------------------------------------------------------------------------------------------ loss_norm, Minkowski

def independent_gradient(records, plw, ids, norm, micro=None, max_seq_len=256, dtype=torch.float32):
    """The loss of each normalisation, written out from its definition one example at a time: global = sum w*CE /
    sum w; nonzero = sum w*CE / #targets with w > 0 (WIT / TRL); micro_mean = the mean over the given micro-batches
    (lists of example ids) of each one's sum w*CE / sum w (HF Trainer's gradient accumulation)."""
    from data.prepare import format_prompt
    tok = Tokenizer(STORIES / "tokenizer.model")
    m = load_model(STORIES, dtype=dtype).train()
    per = {}
    for i in ids:
        r = records[i]
        prompt = format_prompt(r["instruction"], r["input"])
        full = ([tok.bos_id] + tok.encode(prompt + r["output"]) + [tok.eos_id])[:max_seq_len]
        n_prompt = 1 + len(tok.encode(prompt))
        ce = F.cross_entropy(m(torch.tensor([full[:-1]]))[0], torch.tensor(full[1:]), reduction="none")
        wt = torch.tensor([plw if j + 1 < n_prompt else 1.0 for j in range(len(full) - 1)])
        per[int(i)] = ((ce * wt).sum(), wt.sum().item(), int((wt > 0).sum()))
    if norm == "micro_mean":
        loss = sum(sum(per[int(i)][0] for i in mb) / sum(per[int(i)][1] for i in mb) for mb in micro) / len(micro)
    else:
        den = sum(v[1] if norm == "global" else v[2] for v in per.values())
        loss = sum(v[0] for v in per.values()) / den
    loss.backward()
    return {k: p.grad for k, p in m.named_parameters()}


def train_gradient(data, ids, plw, batch_size, accum, norm):
    """the gradient train.py forms with train.row_factors and train.micro_loss, and HF's micro-batches (example ids)"""
    m = load_model(STORIES).train()
    c = {"loss_norm": norm, "batch_size": batch_size}
    factors = train.row_factors(c, *train.example_weights(*example_targets(data, ids), plw), 1)
    for mb in split_micro_batches(ids, np.diff(data["offsets"]), batch_size, accum):
        b = train.host_batch(data, mb, plw, 1, False, 1.0, ids, factors)
        loss, _ = train.micro_loss(m, b["x"], b["y"], b["wl"], 0.0, keep=b["keep"])
        loss.backward()
    return {k: p.grad for k, p in m.named_parameters()}, [ids[r.start:r.stop] for r in train.hf_micro_batches(len(ids),
                                                                                                          batch_size)]


@pytest.mark.parametrize("norm", ["global", "nonzero", "micro_mean"])
@pytest.mark.parametrize("plw", [0.0, 0.1])
def test_loss_normalisations_equal_their_definitions(records, norm, plw):
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records, tok), np.arange(len(records)), 256)
    ids = step_examples(0, len(records), 8, 1337)
    grads = {}
    for bs, accum in [(8, 1), (2, 4)]:
        g, micro = train_gradient(data, ids, plw, bs, accum, norm)
        # against the exact (fp64) gradient of the definition: fp32 itself is 2.3-2.6e-6 of the gradient's scale away
        # from it on this batch (ours and an fp32 reference alike), a wrong normalisation more than 1e-3 (below)
        ref = independent_gradient(records, plw, ids, norm, micro=micro, dtype=torch.float64)
        scale = max(v.abs().max().item() for v in ref.values())
        assert max((g[k].double() - ref[k]).abs().max().item() for k in ref) <= 1e-5 * scale, (bs, accum)
        grads[bs, accum] = g
    # global and nonzero are properties of the global batch: any batch_size gives the same gradient; micro_mean is
    # not (a token weighs more in an HF micro-batch with less total weight), which the docs say
    diff = max((grads[8, 1][k] - grads[2, 4][k]).abs().max().item() for k in grads[8, 1])
    assert diff <= 1e-6 * scale if norm != "micro_mean" else diff > 1e-3 * scale, diff


def test_micro_mean_follows_hf_micro_batches_not_this_runs_split(records):
    # HF's micro-batches are batch_size examples in the step's random order; this run computes the step in length-
    # sorted micro-batches (or by tokens). micro_mean's gradient must not depend on that physical split
    from data.batch import split_by_tokens
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records, tok), np.arange(len(records)), 256)
    ids = step_examples(0, len(records), 8, 1337)
    g, micro = train_gradient(data, ids, PLW, 2, 4, "micro_mean")
    factors = train.row_factors({"loss_norm": "micro_mean", "batch_size": 2},
                                *train.example_weights(*example_targets(data, ids), PLW), 1)
    m = load_model(STORIES).train()
    for mb in split_by_tokens(ids, np.diff(data["offsets"]), 300):  # a different split of the same step
        b = train.host_batch(data, mb, PLW, 1, False, 1.0, ids, factors)
        train.micro_loss(m, b["x"], b["y"], b["wl"], 0.0, keep=b["keep"])[0].backward()
    scale = max(v.abs().max().item() for v in g.values())
    assert max((q.grad - g[k]).abs().max().item() for k, q in m.named_parameters()) <= 1e-6 * scale
    assert not any(set(mb.tolist()) == set(h.tolist()) for mb in split_micro_batches(
        ids, np.diff(data["offsets"]), 2, 4) for h in micro[:1])  # HF's first micro-batch is not a sorted one


def test_step_losses_are_their_definitions():
    # each example's sum w*CE, sum w and count of w > 0, in step order; HF micro-batches of 2
    wce, sw, nz = np.array([2.0, 1.0, 4.0, 0.5, 3.0]), np.array([1.0, 2.0, 2.0, 0.5, 1.0]), np.array([4.0, 2, 8, 1, 2])
    got = train.step_losses(wce, sw, nz, 2)
    assert got["loss"] == pytest.approx(10.5 / 6.5) and got["loss_nonzero"] == pytest.approx(10.5 / 17)
    assert got["loss_micro_mean"] == pytest.approx((3 / 3 + 4.5 / 2.5 + 3 / 1) / 3)
    assert got["loss_hf"] == pytest.approx((3 / 6 + 4.5 / 9 + 3 / 2) / 3)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
def test_minkowski_penalty_gradient_is_autograd_of_the_penalty(p):
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
    params = [torch.nn.Parameter(b + 0.1 * torch.randn(b.shape, generator=g)) for b in base]
    params[0].data[0, :3] = base[0][0, :3]  # some weights exactly at theta_0: the penalty's gradient there is 0
    prior = [torch.randn(q.shape, generator=g) for q in params]  # a gradient already accumulated from the loss
    for q, pr in zip(params, prior):
        q.grad = pr.clone()
    lam = 0.03
    value = train.minkowski_penalty(params, base, lam, p)
    ref_params = [torch.nn.Parameter(q.detach().clone()) for q in params]
    penalty = lam * sum((q - b).abs().pow(p).sum() for q, b in zip(ref_params, base))
    penalty.backward()
    assert value == pytest.approx(penalty.item(), rel=1e-6)
    for q, r, pr in zip(params, ref_params, prior):
        expected = pr + torch.nan_to_num(r.grad)  # autograd's |x|^p at 0 for p = 1 is 0 too (sign(0) = 0)
        assert torch.allclose(q.grad, expected, rtol=1e-6, atol=1e-7)


def test_minkowski_run_logs_the_penalty_and_stays_closer_to_the_base(tmp_path, data_file):
    common = [*TINY, f"--dataset={data_file}", "--max_iters=3"]
    run_train(*common, f"--out_dir={tmp_path / 'plain'}")
    run_train(*common, f"--out_dir={tmp_path / 'mink'}", "--minkowski_lambda=1.0", "--minkowski_p=2.0")
    rows = log_rows(tmp_path / "mink")
    assert rows[0]["minkowski_penalty"] == 0.0 and rows[-1]["minkowski_penalty"] > 0
    base = weights(STORIES)
    dist = {k: sum(((weights(tmp_path / k)[n] - base[n]) ** 2).sum().item() for n in base) for k in ("plain", "mink")}
    assert dist["mink"] < dist["plain"]


# ------------------------------------------------------------------------------------------------ token-budget split

def test_token_budget_split_is_a_partition_within_budget_and_even_over_ranks():
    from data.batch import split_by_tokens
    lengths = np.random.default_rng(0).integers(5, 200, 96)
    ids = step_examples(0, 96, 48, 3)
    for budget in (1, 150, 400, 1000, 10 ** 6):
        for world, pad in ((1, 1), (2, 8), (3, 1), (4, 8)):
            micro = split_by_tokens(ids, lengths, budget, world, pad)
            assert sorted(np.concatenate(micro).tolist()) == sorted(ids.tolist())
            assert len(micro) % world == 0, (budget, world)  # every rank runs the same number of micro-steps
            for mb in micro:  # within the budget, unless one example alone exceeds it
                T = -(-(lengths[mb].max() - 1) // pad) * pad
                assert len(mb) * T <= budget or len(mb) == 1, (budget, world, len(mb), T)
    assert len(split_by_tokens(ids, lengths, 10 ** 6)) == 1
    assert len(split_by_tokens(ids, lengths, 1)) == 48


def test_token_budget_split_gives_the_fixed_size_gradient(records):
    # the gradient through train.py's building blocks, micro-batches cut by tokens, against the one-example-at-a-time
    # reference and the fixed-size (batch_size rows) split: equal to fp32 rounding
    from data.batch import split_by_tokens
    tok = Tokenizer(STORIES / "tokenizer.model")
    data, _, _ = select(tokenize(records, tok), np.arange(len(records)), 256)
    ids = step_examples(0, len(records), 8, 1337)
    lengths = np.diff(data["offsets"])
    ref = reference_gradient(records, PLW, ids)
    fixed = split_gradient(data, ids, PLW, 2, 4)
    scale = max(g.abs().max().item() for g in ref.values())
    n_targets, n_prompt = target_counts(data, ids)
    W = PLW * n_prompt + (n_targets - n_prompt)
    counts = set()
    for budget, world in ((1, 1), (300, 1), (600, 2), (10 ** 6, 1)):
        m = load_model(STORIES).train()
        micro = split_by_tokens(ids, lengths, budget, world)
        counts.add(len(micro))
        for mb in micro:
            x, y, w, _ = collate(data, mb, PLW)
            ((m(x, y) * w).sum() / W).backward()
        for k, q in m.named_parameters():
            assert (q.grad - ref[k]).abs().max().item() <= 1e-6 * scale, (budget, k)
            assert (q.grad - fixed[k]).abs().max().item() <= 1e-6 * scale, (budget, k)
    assert len(counts) >= 3  # the budgets did split differently


def test_train_token_budget_update_equals_fixed_size(tmp_path, data_file):
    # one train.py step: 8 x 1 rows against a token budget (single process and two DDP ranks): the same weights
    common = [*TINY, f"--dataset={data_file}", "--max_iters=1", f"--prompt_loss_weight={PLW}", "--learning_rate=2e-5"]
    common += ["--global_batch_size=8"]
    run_train(*common, "--batch_size=8", f"--out_dir={tmp_path / 'rows'}")
    run_train(*common, "--batch_size=8", "--tokens_per_micro_batch=400", f"--out_dir={tmp_path / 'tokens'}")
    run_train(*common, "--batch_size=4", "--tokens_per_micro_batch=400", f"--out_dir={tmp_path / 'ddp'}", torchrun=2)
    a = weights(tmp_path / "rows")
    base = log_rows(tmp_path / "rows")[0]
    for name in ("tokens", "ddp"):
        b = weights(tmp_path / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 2e-5, name  # see the split test: steep weights
        assert sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a) < 1e-3 * sum(v.numel() for v in a.values())
        row = log_rows(tmp_path / name)[0]
        for key in ("loss", "prompt_loss", "completion_loss", "grad_norm"):
            assert row[key] == pytest.approx(base[key], rel=1e-6), (name, key)


# ------------------------------------------------------------------------------------------------ fused bf16 AdamW

def test_fused_adamw_bf16_is_the_eager_update_bit_for_bit():
    # the compiled per-parameter update against the eager loop, given the same random bits (drawn with torch.randint
    # in the eager loop's order): two groups (weight decay on / off), four shapes, four steps with a changing lr and
    # gradients from 1 to 1e-3: identical weights and moments, and one compiled graph per parameter rank (1-D, 2-D)
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (100, 7), (513,)]
    w0 = [(torch.randn(*s, generator=g) * 0.05).bfloat16() for s in shapes]
    grads = [[torch.randn(*s, generator=g).bfloat16() * 10 ** -k for s in shapes] for k in range(4)]

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
        return [(p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]) for p in ps]

    for a, b in zip(run(False), run(True)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(run(False)[0][0], w0[0])  # it moved
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 2


def test_fused_adamw_bf16_in_kernel_noise_rounds_without_bias():
    # production: the noise is drawn inside the kernel (a different stream from torch.randint, reproducible from the
    # torch seed, so resumed runs stay exact). From w = 1, g = 1, the first step gives w = 1 - lr, m = 0.1, v = 0.001
    # in fp32: every result is one of its two bf16 neighbours, rounded up as often as the distance says
    def step(seed, n=20000):
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = AdamWBF16([p], lr=1e-3).compile()
        p.grad = torch.ones(n, dtype=torch.bfloat16)
        torch.manual_seed(seed)
        opt.step()
        return [p.detach().float(), opt.state[p]["exp_avg"].float(), opt.state[p]["exp_avg_sq"].float()]

    a, b = step(1), step(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    exact = torch.tensor([1 - 1e-3 / (1 + 1e-8), 0.1, 0.001])  # lr * m_hat / (sqrt(v_hat) + eps), m_hat = v_hat = 1
    for x, value in zip(a, exact):
        lo, hi = bf16_neighbours(value[None])
        assert ((x == lo) | (x == hi)).all()
        p_up = ((value - lo) / (hi - lo)).item()
        assert abs((x == hi).float().mean().item() - p_up) <= 5 * (p_up * (1 - p_up) / len(x)) ** 0.5
