"""Every input checked before work starts, and the friction a newcomer hit (issue #29): each bad input below is refused
in one line that names the value or file and what to do, nothing is written before the refusal, and signals end a
run with one line. Most cases run in-process (the entry points' main with report_errors, as cli() runs them); the
signal cases run the scripts."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import sweep
import train
import util
from config import ConfigError, load_config
from conftest import ROOT, SHARED, STORIES, require
from util import DataError, report_errors

ONE_THREAD = True
SAMPLE = ROOT / "data" / "samples" / "alpaca_2k.json"
EVAL = SHARED / "data" / "eval"


def refused(capsys, name, fn, argv, message):
    """fn(argv) through report_errors: exit 1, one line on stderr holding `message`, no traceback"""
    rc = report_errors(name, fn, argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{name}: error: ") and message in err, err
    return err


def files_in(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(path).exists() else []


# ---------------------------------------------------------------------------------------------- numbers and devices

@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu0"], "--device 'gpu0': expected cpu, cuda or cuda:N"),
    (["--batch_tokens", "-1"], "--batch_tokens must be a positive integer, got -1"),
    (["--max_length", "0"], "--max_length must be a positive integer, got 0"),
    (["--max_length", "100000"], "--max_length 100000 exceeds the model's context of 512 tokens"),
    (["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
])
def test_mc_refuses_bad_options_before_any_work(capsys, tmp_path, extra, message):
    from eval import mc
    require(EVAL / "hf" / "piqa.jsonl")
    out = tmp_path / "o" / "mc.json"
    refused(capsys, "mc.py", mc.main, ["--model", str(STORIES), "--tasks", "piqa", "--output", str(out), *extra],
            message)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA accepts --device cuda")
def test_cuda_asked_for_without_cuda_is_one_line(capsys):
    from eval import gen, mc
    refused(capsys, "mc.py", mc.main, ["--model", str(STORIES), "--tasks", "piqa", "--device", "cuda"],
            "--device cuda: no CUDA device is available here (use --device cpu)")
    refused(capsys, "gen.py", gen.main, ["--model", str(STORIES), "--tasks", "wmt16-de-en", "--device", "cuda:1"],
            "--device cuda:1: no CUDA device is available here")


@pytest.mark.parametrize("extra, message", [
    (["--samples", "-1"], "--samples must be >= 0, got -1"),
    (["--max_new_tokens", "100000000"], "--max_new_tokens 100000000 exceeds the model's context of 512 tokens"),
    (["--max_prompt_tokens", "0"], "--max_prompt_tokens must be positive, got 0"),
])
def test_memorization_refuses_bad_numbers(capsys, tmp_path, extra, message):
    from eval import memorization
    refused(capsys, "memorization.py", memorization.main, ["--model", str(STORIES), "--data", str(SAMPLE),
            "--output", str(tmp_path / "o" / "m.json"), *extra], message)
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------------------------------------- sweep.py

SMALL = ["configs/tiny_sweep.py", "--plw=0", "--seeds=", "--regularizers=", "--tasks=piqa", "--mem_n=0", "--dry_run"]


def test_sweep_refuses_an_empty_grid_and_a_missing_dataset_even_in_a_dry_run(capsys, tmp_path):
    d = tmp_path / "sweep"
    refused(capsys, "sweep.py", sweep.main, ["configs/tiny_sweep.py", "--plw=", f"--sweep_dir={d}"],
            "--plw is empty: give at least one value")
    refused(capsys, "sweep.py", sweep.main, ["configs/tiny_sweep.py", "--reg_plw=", f"--sweep_dir={d}"],
            "--reg_plw is empty")
    refused(capsys, "sweep.py", sweep.main, ["configs/tiny_sweep.py", "--datasets=missing.json", "--dry_run",
            f"--sweep_dir={d}"], "--datasets: missing.json: file not found")
    assert not d.exists()


def test_sweep_checks_what_its_steps_need_before_the_first(capsys, tmp_path):
    d = tmp_path / "sweep"
    base = [*SMALL[:-1], f"--sweep_dir={d}"]
    refused(capsys, "sweep.py", sweep.main, [*base, f"--eval_data={tmp_path / 'none'}"],
            f"no such file: {tmp_path / 'none' / 'piqa.jsonl'} (--tasks piqa): run python data/fetch.py")
    refused(capsys, "sweep.py", sweep.main, [*base, "--gen_tasks=wmt16-de-en", f"--gen_data={tmp_path}"],
            "wmt/en-de/newstest2016.de (--gen_tasks wmt16-de-en): run python data/fetch.py")
    refused(capsys, "sweep.py", sweep.main, [*base, "--gen_tasks=wmt99"], "unknown task(s) wmt99")
    refused(capsys, "sweep.py", sweep.main, [*base, f"--models={tmp_path / 'nope'}"],
            f"--models / init_from: {tmp_path / 'nope'}: model directory not found")
    refused(capsys, "sweep.py", sweep.main, [*base, f"--judge={tmp_path}"], f"--judge {tmp_path}: no config.json")
    refused(capsys, "sweep.py", sweep.main, [*base, "--baseline=b.json"], "--baseline is set but --judge is not")
    refused(capsys, "sweep.py", sweep.main, [*base, "--heldout=nope.json"], "--heldout nope.json: file not found")
    (tmp_path / "afile").write_text("x")
    refused(capsys, "sweep.py", sweep.main, [*SMALL[:-1], f"--sweep_dir={tmp_path / 'afile' / 's'}"],
            f"{tmp_path / 'afile'} is a file, not a directory")
    assert files_in(tmp_path) == ["afile"]  # no run was started: the first step never ran


def test_sweep_refuses_to_mix_settings_in_one_condition(capsys, tmp_path):
    d = tmp_path / "sweep"
    argv = [*SMALL, f"--sweep_dir={d}"]
    c = sweep.settings(argv)[0]
    cond = sweep.conditions(c)[0]
    run_dir = d / "plw0"
    run_dir.mkdir(parents=True)

    def recorded(**changes):  # run_config.json as train.py writes it, with some settings changed
        cfg = {**sweep.expected_config(c, cond, run_dir, d), "world_size": 1, "global_batch": 16, **changes}
        (run_dir / "run_config.json").write_text(json.dumps(cfg))

    recorded()
    assert report_errors("sweep.py", sweep.main, argv) == 0  # the same settings: continued
    recorded(out_dir="/somewhere/else", batch_size=16, gradient_accumulation_steps=1, log_interval=5)
    assert report_errors("sweep.py", sweep.main, argv) == 0  # moved, or the same global batch split otherwise
    capsys.readouterr()
    recorded(learning_rate=0.5)
    refused(capsys, "sweep.py", sweep.main, argv, f"{run_dir} was trained with learning_rate=0.5 (now 0.001)")
    recorded(max_iters=7, global_batch=32)
    err = refused(capsys, "sweep.py", sweep.main, argv, "max_iters=7 (now 20)")
    assert "global batch 32" in err and "another --sweep_dir" in err


def test_sweep_takes_key_space_value(capsys, tmp_path):
    rc = report_errors("sweep.py", sweep.main, ["configs/tiny_sweep.py", "--plw", "0,1", "--seeds", "", "--tasks",
                                                "piqa", "--regularizers", "", "--mem_n", "0", "--dry_run",
                                                "--learning_rate", "0.002", "--sweep_dir", str(tmp_path / "s")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2 * 3  # 2 PLWs x (train, mc, distance)
    assert "--prompt_loss_weight=1.0" in out[3] and "--learning_rate=0.002" in out[0]


def test_config_takes_key_space_value():
    cfg = load_config(train.DEFAULTS, ["configs/tiny_stories.py", "--max_iters", "3", "--compile", "--dropout", "0.1",
                                       "--resume", "False", "--out_dir", "x/y", "--overwrite"])
    assert (cfg["max_iters"], cfg["compile"], cfg["dropout"], cfg["resume"], cfg["out_dir"], cfg["overwrite"]) == (
        3, True, 0.1, False, "x/y", True)
    with pytest.raises(ConfigError, match="unknown config key 'max_iter' in --max_iter"):
        load_config(train.DEFAULTS, ["--max_iter", "3"])


def sigterm_caught(pid):
    """Whether process pid has a handler for SIGTERM yet (Linux: /proc/pid/status): the event 'its set-up began'"""
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when the handler is set")
def test_sigterm_ends_gen_with_one_line():
    require(EVAL / "wmt")
    p = subprocess.Popen([sys.executable, "eval/gen.py", "--model", str(STORIES), "--tasks", "wmt16-de-en",
                          "--max_new_tokens", "64"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not sigterm_caught(p.pid) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "gen.py: interrupted by SIGTERM; nothing half-written is left")


def test_ctrl_c_during_sweep_stops_the_step_cleanly(tmp_path):
    d = tmp_path / "sweep"
    p = subprocess.Popen([sys.executable, "sweep.py", "configs/tiny_sweep.py", "--plw=0", "--seeds=",
                          "--regularizers=", "--tasks=", "--mem_n=0", "--max_iters=400", "--max_seq_len=256",
                          "--checkpoint_interval=1000", f"--sweep_dir={d}"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in p.stderr:  # the training step has finished its set-up...
        lines.append(line)
        if "training examples, global batch" in line:
            break
    log = d / "plw0" / "log.jsonl"
    deadline = time.time() + 120
    while (not log.exists() or not log.read_text()) and time.time() < deadline:  # ...and logged a step
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, rest = p.communicate(timeout=300)
    err = "".join(lines) + rest
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "sweep.py: interrupted by SIGINT; nothing half-written is left", err
    assert "sweep.py: stopping plw0 train" in err
    assert "[plw0 train] interrupted by signal 15 after iter" in err  # train.py stopped after a step, checkpointed
    assert train.list_checkpoints(d / "plw0") and not (d / "plw0" / "config.json").exists()


# ---------------------------------------------------------------------------------------------- checkpoints, disk

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run with checkpoints after steps 2 and 4 (torch.distributed.checkpoint shards + train_state.pt)"""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = subprocess.run([sys.executable, "train.py", "configs/tiny_stories.py", f"--dataset={SAMPLE}", f"--out_dir={out}",
                        "--max_iters=4", "--checkpoint_interval=2", "--keep_checkpoints=2", "--max_seq_len=256",
                        "--checkpoint_async=False"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def fake_run(trained, out, steps):
    """A copy of the trained run keeping the checkpoints at `steps` (of 2, 4)"""
    shutil.copytree(trained, out)
    for ck in train.list_checkpoints(out):
        if int(ck.name.removeprefix("ckpt-")) not in steps:
            shutil.rmtree(ck)
    return [out / f"ckpt-{s:06d}" for s in steps]


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, trained):
    ckpts = fake_run(trained, tmp_path / "a", [2, 4])
    state = ckpts[-1] / "train_state.pt"
    state.write_bytes(state.read_bytes()[:300])  # cut short, as a full disk or a killed copy leaves it
    with pytest.raises(DataError) as e:
        checkpoint.check_checkpoint(ckpts)
    assert str(e.value).startswith(f"checkpoint 4 ({ckpts[-1]}) is damaged: train_state.pt is not whole")
    assert str(e.value).endswith(f"resume from checkpoint 2 (move {ckpts[-1]} away first) or start over with "
                                 f"--overwrite=True")
    ckpts = fake_run(trained, tmp_path / "b", [2])
    shard = next(ckpts[0].glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"checkpoint 2 .* is damaged: its weights or optimizer state are not whole "
                                        r".*; start over"):
        checkpoint.check_checkpoint(ckpts)
    (ckpts[0] / ".metadata").unlink()
    with pytest.raises(DataError, match=r"checkpoint 2 .* is damaged: its DCP metadata \(.metadata\) is missing"):
        checkpoint.check_checkpoint(ckpts)


def test_resuming_from_a_truncated_train_state_is_one_line(tmp_path, trained):
    out, cache = tmp_path / "run", tmp_path / "cache"
    ckpts = fake_run(trained, out, [2])
    (ckpts[0] / "train_state.pt").write_bytes((ckpts[0] / "train_state.pt").read_bytes()[:200])
    before = files_in(out)
    r = subprocess.run([sys.executable, "train.py", "configs/tiny_stories.py", f"--out_dir={out}", "--resume=True"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "NANOPLW_CACHE_DIR": str(cache)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"train.py: error: checkpoint 2 ({ckpts[0]}) is damaged: train_state.pt is not whole (File is not a zip "
        f"file); start over with --overwrite=True")
    assert files_in(out) == before and not cache.exists()  # refused before the data was prepared


def test_a_moved_run_folder_resumes(tmp_path):
    # resume_state compares the settings that change the computation; where the folder now is, is not one of them
    c = {**train.DEFAULTS, "init_from": str(STORIES), "out_dir": str(tmp_path / "moved"), "resume": True}
    ck = tmp_path / "moved" / "ckpt-000001"
    ck.mkdir(parents=True)
    torch.save({"iter": 1, "config": {**c, "out_dir": "/old/place", "resume": False}, "global_batch": 16,
                "data_fingerprint": "f"}, ck / "train_state.pt")
    assert checkpoint.resume_state(c, [ck], 16, "f", train.DEFAULTS, train.RESUMABLE_CHANGES)["iter"] == 1
    with pytest.raises(DataError, match="learning_rate: 2e-05 -> 0.1"):
        checkpoint.resume_state({**c, "learning_rate": 0.1}, [ck], 16, "f", train.DEFAULTS, train.RESUMABLE_CHANGES)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temp_dir(tmp_path):
    # train.py writing checkpoint 2 (torch.distributed.checkpoint shards, then train_state.pt) when the disk fills:
    # one line naming the checkpoint, its temp directory and the space, exit 1; checkpoint 1 whole, no temp left
    out = tmp_path / "run"
    args = ["tests/fault_train.py", "configs/tiny_stories.py", f"--dataset={SAMPLE}", f"--out_dir={out}",
            "--max_iters=3", "--checkpoint_interval=1", "--keep_checkpoints=3", "--max_seq_len=256"]
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NANOPLW_FAULT_FULL_CKPT": "2", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert f"disk full while writing checkpoint 2 to {out / '.ckpt-000002.tmp'}: it needs about " in line
    assert "is free; the last checkpoint before it is whole, so free space and resume with --resume=True" in line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".ckpt", "ckpt"))) == ["ckpt-000001"]


def test_a_full_disk_names_the_file(tmp_path):
    def full(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DataError, match=rf"disk full while writing {tmp_path / 'out.json'} \(.* MB free there\)"):
        util.atomic_write(tmp_path / "out.json", full)
    assert files_in(tmp_path) == []
    log = checkpoint.Log(tmp_path / "log.jsonl")
    log.f.close()
    log.f = type("Full", (), {"write": lambda self, t: full(tmp_path / "x"), "close": lambda self: None})()
    with pytest.raises(DataError, match=rf"cannot write {tmp_path / 'log.jsonl'} \(disk full\): the last checkpoint"):
        log.write("{}\n")


# ---------------------------------------------------------------------------------------------- nothing written first

def test_prepare_writes_no_cache_before_refusing(tmp_path):
    from data.prepare import prepare_dataset
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"val_size must be an integer in \[0, 1999\] for 2000 examples, got 5000"):
        prepare_dataset(SAMPLE, STORIES, 512, val_size=5000, cache_dir=cache, verbose=False)
    with pytest.raises(ConfigError, match="nothing to train"):
        c = {**train.DEFAULTS, "max_seq_len": 8, "prompt_loss_weight": 0.0}
        prepare_dataset(SAMPLE, STORIES, 8, cache_dir=cache, verbose=False,
                        check=lambda tr, va: train.check_trainable(c, tr, 1))
    with pytest.raises(ConfigError, match="the dataset has 2000 training examples, fewer than one global batch of 4096"):
        prepare_dataset(SAMPLE, STORIES, 512, cache_dir=cache, verbose=False,
                        check=lambda tr, va: train.check_trainable({**train.DEFAULTS, "batch_size": 128}, tr, 4096))
    assert not cache.exists()
    prepare_dataset(SAMPLE, STORIES, 512, cache_dir=cache, verbose=False)
    assert len(files_in(cache)) == 1


# ---------------------------------------------------------------------------------------------- errors name their file

def test_errors_name_their_file(capsys, tmp_path):
    from data import invert
    from eval import analyze, gen, heldout, mc
    (tmp_path / "afile").write_text("x")
    blocked = tmp_path / "afile" / "x.json"
    # [Errno 17] File exists -> which path is a file
    refused(capsys, "invert.py", lambda a: invert.invert_cli(a), type("A", (), {"src": str(SAMPLE), "dst": str(blocked)}),
            f"cannot write {blocked}: {tmp_path / 'afile'} is a file, not a directory")
    refused(capsys, "analyze.py", analyze.run, type("A", (), {"out": str(tmp_path / "afile" / "an"), "scores": None,
            "log": [], "json": False, "window": 5}), f"{tmp_path / 'afile'} is a file, not a directory")
    # a broken config.json, named
    bad = tmp_path / "model"
    shutil.copytree(STORIES, bad)
    (bad / "config.json").write_text("{broken")
    refused(capsys, "train.py", train.load_base, {**train.DEFAULTS, "init_from": str(bad)},
            f"{bad / 'config.json'} is not valid JSON")
    # a damaged side file of the study, of the sweep
    (tmp_path / "bs.json").write_text("{oops")
    refused(capsys, "heldout.py", heldout.read_base_samples, tmp_path / "bs.json",
            f"--base_samples {tmp_path / 'bs.json'}: not a base_samples file")
    run = tmp_path / "plw0"
    run.mkdir()
    (run / "eval_mc.json").write_text('{"results": ')
    refused(capsys, "sweep.py", lambda cond: sweep.score_rows(cond, run), ("m", "d", 0.0, "none", 0.0, 1),
            f"{run / 'eval_mc.json'}: unreadable")
    # a data file that is not UTF-8
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "piqa.jsonl").write_bytes(b"\xff\xfe{}\n")
    refused(capsys, "mc.py", lambda t: mc.load_docs(t, tmp_path / "hf"), "piqa",
            f"{tmp_path / 'hf' / 'piqa.jsonl'}: not UTF-8 text")
    for lang in ("de", "en"):
        (tmp_path / "wmt" / "en-de").mkdir(parents=True, exist_ok=True)
        (tmp_path / "wmt" / "en-de" / f"newstest2016.{lang}").write_bytes(b"ok\n" if lang == "en" else b"\xff\n")
    refused(capsys, "gen.py", lambda t: gen.load_docs(t, tmp_path), "wmt16-de-en",
            f"{tmp_path / 'wmt' / 'en-de' / 'newstest2016.de'}: not UTF-8 text")
    # the tokenized-data cache where a file is in the way
    from data.prepare import prepare_dataset
    refused(capsys, "prepare.py", lambda c: prepare_dataset(SAMPLE, STORIES, 512, cache_dir=c, verbose=False),
            tmp_path / "afile" / "cache", f"{tmp_path / 'afile'} is a file, not a directory (the tokenized-data cache)")


def test_the_judged_benchmarks_say_how_to_get_their_data(capsys):
    from eval import generate
    refused(capsys, "generate.py", generate.load_prompts, generate.EVAL_DATA / "alpaca_eval" / "missing.json",
            "missing.json: run python data/fetch.py, or point NANOPLW_DATA at a directory that has it")
