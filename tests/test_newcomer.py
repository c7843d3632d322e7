"""
What a new user meets first (issue #21): Ctrl-C at any moment, out_dir problems before any long work, messages that
name the real problem, runs that cannot train, file modes, --help, extending a run, a checkout left clean.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import ALPACA, ROOT, STORIES, require
import train
import util
from checkpoint import list_checkpoints

TINY = ["configs/tiny_stories.py", "--max_seq_len=256", "--learning_rate=1e-2", "--warmup_iters=0"]
SAMPLE = ROOT / "data" / "samples" / "alpaca_2k.json"


def run(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "alpaca64.json"
    path.write_text(json.dumps(json.loads(SAMPLE.read_text())[:64]))
    return path


def test_ctrl_c_during_data_preparation_stops_at_once(tmp_path):
    # 52,002 records take seconds to tokenize; SIGINT lands inside sentencepiece's batch encode, which swallows
    # the KeyboardInterrupt: the run must still stop, say so in one line, exit 130 and leave no cache or run behind
    require(ALPACA)
    cache, out = tmp_path / "cache", tmp_path / "run"
    p = subprocess.Popen([sys.executable, "train.py", *TINY, f"--dataset={ALPACA}", "--max_iters=1", f"--out_dir={out}"],
                         cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "NANOPLW_CACHE_DIR": str(cache)})
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while "tokenize" not in "".join(err) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the event: the tokenize progress bar has appeared
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(err)
    assert rc == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("train.py: interrupted"), err
    assert "done" not in err
    assert not cache.exists() or not any(cache.iterdir())  # no half-written cache
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_bad_out_dir_is_refused_before_data_preparation(tmp_path, data64, where):
    target = tmp_path / "a_file"
    target.write_text("x")
    out = {"file": target, "under_file": target / "run", "read_only": "/sys/nanoplw_test_run"}[where]
    r = run("train.py", *TINY, f"--dataset={data64}", "--max_iters=1", f"--out_dir={out}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(out) in r.stderr.splitlines()[-1] and "out_dir" in r.stderr.splitlines()[-1]
    assert "examples" not in r.stderr  # refused before the data was prepared
    assert target.read_text() == "x"


def test_eval_output_that_cannot_be_written_is_refused_before_scoring(tmp_path):
    r = run("eval/mc.py", f"--model={STORIES}", "--tasks=arc_easy", "--data_dir=../shared/data/eval/hf",
            "--output=/sys/nanoplw_test/mc.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "/sys/nanoplw_test/mc.json" in r.stderr and "scoring" not in r.stderr


@pytest.mark.parametrize("script", ["eval/mc.py", "eval/memorization.py"])
def test_missing_model_directory_is_named_as_such(tmp_path, script):
    extra = ["--tasks=arc_easy", "--data_dir=../shared/data/eval/hf"] if script == "eval/mc.py" else \
        [f"--data={SAMPLE}"]
    r = run(script, f"--model={tmp_path / 'nope'}", *extra)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "model directory not found" in last and "nope" in last and "tokenizer" not in last


def test_a_run_with_no_loss_weight_is_refused(tmp_path, data64):
    out, cache = tmp_path / "run", tmp_path / "cache"
    r = run("train.py", *TINY, f"--dataset={data64}", "--max_iters=1", "--max_seq_len=8", "--prompt_loss_weight=0",
            f"--out_dir={out}", env={**os.environ, "NANOPLW_CACHE_DIR": str(cache)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "nothing to train" in r.stderr and "max_seq_len=8" in r.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not cache.exists()  # refused before the tokenized data was cached (issue #29)


def test_plw_above_one_is_allowed_with_a_note(tmp_path, data64):
    r = run("train.py", *TINY, f"--dataset={data64}", "--max_iters=1", "--prompt_loss_weight=1.5",
            f"--out_dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    assert "note: prompt_loss_weight 1.5 > 1" in r.stderr


def test_exported_files_are_readable_by_others(tmp_path, data64):
    out = tmp_path / "run"
    r = run("train.py", *TINY, f"--dataset={data64}", "--max_iters=1", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "tokenizer.model", "log.jsonl", "run_config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize("script", ["train.py", "sweep.py", "bench.py"])
def test_help_lists_the_options_with_defaults_and_meanings(script):
    r = run(script, "--help", timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    if script == "train.py":
        assert "--prompt_loss_weight=0.0" in r.stdout and "the weight of prompt tokens in the loss" in r.stdout
        assert all(f"--{k}=" in r.stdout for k in train.DEFAULTS)
    assert r.stdout.count("\n--") + r.stdout.count("\n  --") >= 5


def test_resume_can_extend_a_run_moved_elsewhere(tmp_path, data64):
    out = tmp_path / "run"
    assert run("train.py", *TINY, f"--dataset={data64}", f"--out_dir={out}", "--max_iters=2").returncode == 0
    out = out.rename(tmp_path / "moved")  # a run folder moved or copied resumes where it is now (issue #29)
    r = run("train.py", *TINY, "--dataset", data64, "--out_dir", out, "--max_iters", "4", "--resume")  # --key value
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [row["iter"] for row in rows] == [1, 2, 3, 4]
    assert [c.name for c in list_checkpoints(out)] == ["ckpt-000004"]


def test_tests_leave_the_checkout_clean(tmp_path, data64):
    # the tokenized-data cache of a run started by the tests goes to NANOPLW_CACHE_DIR (conftest), not data/cache
    before = set((ROOT / "data" / "cache").glob("*")) if (ROOT / "data" / "cache").exists() else set()
    assert run("train.py", *TINY, f"--dataset={data64}", "--max_iters=1", f"--out_dir={tmp_path / 'run'}").returncode == 0
    after = set((ROOT / "data" / "cache").glob("*")) if (ROOT / "data" / "cache").exists() else set()
    assert after == before


class FakeTorch:
    def __init__(self, n):
        self.n = n

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.n = n


def test_threads_are_chosen_for_a_busy_cpu(monkeypatch):
    # the 1-minute load average is what bench.py reads too; faked here, as a real load generator takes a minute.
    # All threads below saturation; from a load of the core count on, 2 x cores - load, at least 1; OMP_NUM_THREADS
    # set by the user is left alone.
    monkeypatch.setattr(util.os, "cpu_count", lambda: 2)
    for load, want in ((0.2, 2), (0.8, 2), (1.6, 2), (2.5, 1), (6.0, 1)):
        monkeypatch.setattr(util.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        t = FakeTorch(2)
        note = util.choose_threads(t, env={})
        assert t.n == want, load
        assert (note is None) == (want == 2)
        if note:
            assert note.startswith(f"note: the CPU is busy (load {load:.1f} on 2 cores): using 1 thread instead of 2")
    t = FakeTorch(2)
    assert util.choose_threads(t, env={"OMP_NUM_THREADS": "2"}) is None and t.n == 2


def test_train_chooses_its_threads_and_says_so(tmp_path, data64):
    # a real run under a faked busy CPU: the note names the count it chose
    code = ("import os, sys, runpy; os.getloadavg = lambda: (64.0, 64.0, 64.0)\n"
            f"sys.argv = ['train.py', *{TINY!r}, '--dataset={data64}', '--max_iters=1', '--out_dir={tmp_path / 'run'}']\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    if (os.cpu_count() or 1) > 1:
        assert "note: the CPU is busy (load 64.0" in r.stderr and "using 1 thread instead of" in r.stderr
