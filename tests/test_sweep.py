"""sweep.py end to end on a minute-sized grid: runs, evaluations, scores.jsonl, analysis, skip, resume, dry run."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, EVAL_HF, require

SMALL = ["--plw=0,0.1,1", "--seeds=", "--regularizers=", "--tasks=piqa", "--mc_limit=6", "--mem_n=4", "--mem_max_new_tokens=4",
         "--max_iters=2", "--max_seq_len=256"]


def sweep(*args, check=True):
    r = subprocess.run([sys.executable, "sweep.py", "configs/tiny_sweep.py", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and r.returncode:
        raise AssertionError(r.stderr[-3000:])
    return r


def test_sweep_runs_evaluates_analyzes_and_skips_what_is_done(tmp_path):
    require(EVAL_HF / "piqa.jsonl")
    d = tmp_path / "sweep"
    sweep(*SMALL, f"--sweep_dir={d}", f"--eval_data={EVAL_HF}")
    rows = [json.loads(l) for l in (d / "scores.jsonl").read_text().splitlines()]
    assert sorted({r["plw"] for r in rows}) == [0.0, 0.1, 1.0]
    by = {(r["plw"], r["benchmark"]): r for r in rows}
    for plw in (0.0, 0.1, 1.0):
        run = d / f"plw{plw:g}"
        assert json.loads((run / "run_config.json").read_text())["prompt_loss_weight"] == plw
        mc = json.loads((run / "eval_mc.json").read_text())["results"]["piqa"]
        assert by[plw, "piqa"]["score"] == mc["acc_norm"] and mc["n"] == 6
        mem = json.loads((run / "eval_memorization.json").read_text())
        assert by[plw, "memorization_bleu"]["score"] == mem["bleu"] and mem["n"] == 4
        dist = json.loads((run / "eval_distance.json").read_text())
        assert by[plw, "weight_distance_l2_rel"]["score"] == dist["overall"]["l2_rel"] > 0
        assert (plw, "loss_rsd") not in by  # 2 steps: no 5-step window, so no RSD row (noted, not invented)
    # the same seed and data order for every PLW: the first step's examples, hence its token count, are equal
    firsts = [json.loads((d / f"plw{p:g}" / "log.jsonl").read_text().splitlines()[0]) for p in (0, 0.1, 1)]
    assert len({f["tokens"] for f in firsts}) == 1 and len({round(f["completion_loss"], 9) for f in firsts}) == 1
    fit = json.loads((d / "analysis" / "fit.json").read_text())
    assert fit and (d / "analysis" / "table.md").exists()

    # everything is done: a second sweep runs nothing and rebuilds the same scores
    before = (d / "scores.jsonl").read_text()
    r = sweep(*SMALL, f"--sweep_dir={d}", f"--eval_data={EVAL_HF}")
    assert "] train:" not in r.stderr and "] mc:" not in r.stderr
    assert (d / "scores.jsonl").read_text() == before

    # an interrupted run (a checkpoint, no final model) is resumed; a dry run prints the commands still to run
    (d / "plw0.1" / "config.json").unlink()  # as a kill before the export's last step leaves it
    (d / "plw0.1" / "eval_mc.json").unlink()
    r = sweep(*SMALL, f"--sweep_dir={d}", f"--eval_data={EVAL_HF}", "--dry_run")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "--prompt_loss_weight=0.1" in lines[0] and lines[0].endswith("--resume=True")
    assert "eval/mc.py" in lines[1] and "plw0.1" in lines[1]


@pytest.mark.parametrize("args, message", [
    (["--plw=0,x"], "--plw must be comma-separated numbers"),
    (["--plw=-1,0"], "--plw must be non-negative"),
    (["--learning_rat=1"], "unknown config key 'learning_rat'"),
    (["stray.py"], "config file not found: stray.py"),
])
def test_bad_sweep_arguments(args, message):
    r = sweep(*args, "--dry_run", check=False)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
