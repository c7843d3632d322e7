"""Reliability: every entry point refuses bad input in one line (no traceback, nothing half-written), and a
training run killed at any moment (SIGKILL, also inside a checkpoint write) resumes to bit-identical weights."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, STORIES, LLAMA_TOKENIZER, require
import train

SAMPLE = ROOT / "data" / "samples" / "alpaca_2k.json"
TOK = STORIES / "tokenizer.model"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """bad inputs, built once: each case below names the ones it uses"""
    d = tmp_path_factory.mktemp("bad")
    records = json.loads(SAMPLE.read_text())[:40]
    (d / "good.json").write_text(json.dumps(records))
    (d / "not_json.json").write_text("{this is not json")
    (d / "empty.json").write_text("")
    (d / "missing_field.json").write_text(json.dumps([records[0], {"instruction": "x", "input": ""}]))
    (d / "not_string.json").write_text(json.dumps([records[0], {"instruction": "x", "input": 3, "output": "y"}]))
    broken = d / "broken_model"  # a tensor removed from an otherwise good checkpoint
    shutil.copytree(STORIES, broken)
    from safetensors.torch import load_file, save_file
    sd = load_file(broken / "model.safetensors")
    del sd["model.layers.1.self_attn.k_proj.weight"]
    save_file(sd, broken / "model.safetensors")
    garbage = d / "garbage_model"  # a model.safetensors that is not one
    shutil.copytree(STORIES, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00" * 100)
    (d / "scores.jsonl").write_text('{"plw": 0, "benchmark": "piqa", "score": 0.5}\n{oops\n')
    (d / "hyp.txt").write_text("a\nb\n")
    (d / "out_run").mkdir()
    return d


T = ["train.py", "configs/tiny_stories.py", "--max_iters=1"]
CASES = [  # (command, expected words of the one-line message); {d} = the files above, {out} = a fresh out_dir
    (T + ["--promt_loss_weight=0.1"], "unknown config key 'promt_loss_weight' in --promt_loss_weight=0.1 (did you mean 'prompt_loss_weight'?)"),
    (T + ["--batch_size=0"], "batch_size must be >= 1, got 0"),
    (T + ["--learning_rate=-1e-4"], "learning_rate must be >= 0, got -0.0001"),
    (T + ["--prompt_loss_weight=-0.5"], "prompt_loss_weight must be >= 0, got -0.5"),
    (T + ["--dropout=hi"], "dropout must be a float, got 'hi'"),
    (["train.py", "configs/no_such.py"], "config file not found: configs/no_such.py"),
    (T + ["--init_from=/no/such/llama"], "no model at init_from='/no/such/llama'"),
    (T + ["--init_from={d}/broken_model"], "missing tensor(s) model.layers.1.self_attn.k_proj.weight"),
    (T + ["--init_from={d}/garbage_model"], "not a readable safetensors file"),
    (T + [f"--tokenizer={LLAMA_TOKENIZER}"], "has 32000 tokens but the model in tests/fixtures/stories260K has a vocabulary of 512"),
    (T + ["--tokenizer={d}/hyp.txt"], "not a sentencepiece model"),
    (T + ["--dataset={d}/not_json.json"], "not_json.json: not valid JSON"),
    (T + ["--dataset={d}/empty.json"], "empty.json: file is empty"),
    (T + ["--dataset={d}/missing_field.json"], "missing_field.json: record 1 has no field 'output'"),
    (T + ["--dataset={d}/not_string.json"], "not_string.json: record 1 field 'input' is a int, expected a string"),
    (T + ["--dataset={d}/no_such.json"], "no_such.json: file not found"),
    (T + ["--resume=True", "--out_dir={d}/out_run"], "holds no checkpoint to resume from"),
    (["sweep.py", "configs/tiny_sweep.py", "--plw=0,1,two", "--dry_run"], "--plw must be comma-separated numbers"),
    (["data/prepare.py", "--src={d}/missing_field.json", f"--tokenizer={TOK}"], "record 1 has no field 'output'"),
    (["data/invert.py", "--src={d}/not_json.json", "--dst={out}/inv.json"], "not valid JSON"),
    (["data/stats.py", f"--tokenizer={TOK}", "{d}/empty.json"], "empty.json: file is empty"),
    (["eval/mc.py", f"--model={STORIES}", "--tasks=piqa,arc_hard", "--data_dir={d}"], "unknown task"),
    (["eval/mc.py", f"--model={STORIES}", "--tasks=piqa", "--data_dir={d}"], "piqa.jsonl"),
    (["eval/memorization.py", "--model={d}/nope", "--data={d}/good.json"], "nope"),
    (["eval/distance.py", f"--model={STORIES}", "--base={d}/broken_model"], "k_proj"),
    (["eval/generate.py", f"--model={STORIES}", "--prompts={d}/missing.json", "--output={out}/gen.json"], "missing.json"),
    (["eval/analyze.py", "--scores={d}/scores.jsonl"], "scores.jsonl:2: invalid JSON"),
    (["eval/bleu.py", "{d}/hyp.txt", "{d}/no_ref.txt"], "no_ref.txt"),
    (["bench.py", "--model=llama-9000b"], "llama-9000b"),
]


@pytest.mark.parametrize("cmd, message", CASES, ids=[f"{c[0]}:{c[-1][:40]}" for c, _ in CASES])
def test_bad_input_is_one_clear_line(files, tmp_path, cmd, message):
    out = tmp_path / "out"
    args = [a.format(d=files, out=out) for a in cmd]
    if args[0] == "train.py" and not any(a.startswith("--out_dir=") for a in args):
        args.append(f"--out_dir={out}")
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = r.stderr.strip()
    assert r.returncode >= 1, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert message.format(d=files) in last, err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())  # nothing written
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # not even a temp file


def test_internal_errors_keep_their_traceback(tmp_path):
    # a bug is not a user error: it must surface with its traceback, not be swallowed into one line
    code = ("import runpy, sys, data.prepare as p\n"
            "p.prepare_dataset = lambda *a, **k: 1 / 0\n"
            f"sys.argv = ['train.py', 'configs/tiny_stories.py', '--out_dir={tmp_path / 'o'}']\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


# ---------------------------------------------------------------------------------------------- kills

ARGS = ["configs/tiny_stories.py", "--max_seq_len=256", "--learning_rate=1e-2", "--warmup_iters=0", "--max_iters=6",
        "--batch_size=4", "--global_batch_size=8", "--dropout=0.1", "--checkpoint_interval=1"]


def launch(out, data, env=None):
    resume = bool(train.list_checkpoints(out))
    args = ARGS + [f"--dataset={data}", f"--out_dir={out}", "--resume=True" if resume else "--overwrite=True"]
    script = "tests/fault_train.py" if env else "train.py"  # the fault-injection seam
    # one thread: on busy cores two OpenMP threads of a tiny model spin-wait on each other (many times slower)
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def weights(path):
    from safetensors.torch import load_file
    return load_file(path / "model.safetensors")


def rows_logged(out):
    try:
        return (out / "log.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def run_until(p, out, k, delay):
    """SIGKILL p `delay` seconds after the event "k steps logged" (k = 0: the process started); True if it died by
    the kill, False if it had already finished. Events the run reports, not fractions of a reference run's wall time,
    so a slower or busier machine moves the kill with the run."""
    while rows_logged(out) < k and p.poll() is None:
        time.sleep(0.01)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        return p.wait(timeout=300) == -signal.SIGKILL


def test_sigkill_at_any_moment_then_resume_gives_bit_identical_weights(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(json.loads(SAMPLE.read_text())[:64]))
    ref = tmp_path / "ref"
    t0 = time.time()
    p = launch(ref, data)
    seen = [t0]
    while p.poll() is None:  # when each step's row appears: the time one step (+ its checkpoint) takes here
        if rows_logged(ref) >= len(seen):
            seen.append(time.time())
        time.sleep(0.01)
    assert p.wait(timeout=900) == 0, p.stderr.read()
    step = min(b - a for a, b in zip(seen[1:], seen[2:])) if len(seen) > 2 else 0.5
    expected = weights(ref)
    expected_log = [json.loads(l) for l in (ref / "log.jsonl").read_text().splitlines()]

    # trial 0 dies inside the write of checkpoint 3 (after the files, before the rename); trials 1-3 are killed at a
    # random moment after a random event: start-up (k = 0, while the model loads and the data is prepared) or the
    # k-th logged step (then inside the next step, its checkpoint write, or the final export), then left to finish
    rng = random.Random(1234)
    for trial, k in enumerate([None, 0, 2, 4]):
        out = tmp_path / f"run{trial}"
        kills = 0
        if k is None:
            p = launch(out, data, {"NANOPLW_FAULT_KILL_CKPT": "3"})
            assert p.wait(timeout=900) == -signal.SIGKILL
            assert [c.name for c in train.list_checkpoints(out)] == ["ckpt-000002"]  # the torn one is invisible
            assert list(out.glob(".ckpt-000003.tmp"))
            kills = 1
        else:
            delay = rng.uniform(0.1, 2.0) if k == 0 else rng.uniform(0.0, 0.9) * step
            while not run_until(launch(out, data), out, k, delay):  # finished first: the machine sped up; again,
                shutil.rmtree(out)                                  # sooner
                delay /= 2
            kills = 1
        p = launch(out, data)
        assert p.wait(timeout=900) == 0, p.stderr.read()  # generous: a loaded machine is slow, not wrong
        got = weights(out)
        assert all(torch.equal(got[k], expected[k]) for k in expected), f"trial {trial}, {kills} kills"
        log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in log] == list(range(1, 7))
        assert [r["loss"] for r in log] == [r["loss"] for r in expected_log]
        assert not list(out.glob(".*.tmp*")) and not list(out.glob(".ckpt-*"))
        print(f"trial {trial}: killed after event {k}")
