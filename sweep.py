"""
Run the paper's experiment: fine-tune at each prompt loss weight, evaluate every run, analyze the grid.

    python sweep.py configs/tiny_sweep.py                          # the CPU-sized sweep, a few minutes
    python sweep.py configs/short_plw01.py --plw=0,0.01,0.1,1      # the paper's runs (GPUs), a sub-grid
    python sweep.py configs/short_plw01.py --dry_run               # print the commands, for a cluster scheduler
    python sweep.py configs/short_plw01.py --launcher="torchrun --standalone --nproc_per_node=8"

For each PLW (default: the paper's 10-value grid), with the same config, seed and data order:
  1. train.py ... --prompt_loss_weight=P --out_dir=SWEEP/plw{P}      (resumed if interrupted, skipped if finished)
  2. eval/mc.py          multiple choice, lm-eval-exact           -> SWEEP/plw{P}/eval_mc.json
  3. eval/memorization.py greedy completions of training prompts  -> SWEEP/plw{P}/eval_memorization.json
  4. eval/distance.py    weight distance to the base model        -> SWEEP/plw{P}/eval_distance.json
  5. the training-loss RSD over 5-step windows, from log.jsonl
Each step is skipped when its output exists, so re-running the sweep continues where it stopped. Then
SWEEP/scores.jsonl is rebuilt from those files (one row per run and benchmark or mechanism metric) and
eval/analyze.py writes the table, the quadratic fit and the figures to SWEEP/analysis/.

Settings: the flags below, or sweep_<flag> assignments in the config file (train.py ignores those); other
--key=value arguments are train.py overrides applied to every run.
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

PAPER_GRID = "0,5e-4,2.236e-3,0.01,0.02463,0.05,0.1,0.2463,0.5,1"
SETTINGS = {  # flag: (default, help); a config file's sweep_<flag> overrides the default, the flag overrides both
    "plw": (PAPER_GRID, "comma-separated prompt loss weights"),
    "sweep_dir": ("", "where the runs go (default: the config's out_dir + '_sweep')"),
    "tasks": ("arc_challenge,piqa,truthfulqa_mc2,winogrande", "multiple-choice tasks (the paper's four)"),
    "eval_data": ("../shared/data/eval/hf", "directory with <task>.jsonl in the HF-datasets layout"),
    "mc_limit": (0, "first N documents per task (0: all)"),
    "mem_n": (10000, "training prompts for memorization BLEU (the paper: 10,000)"),
    "mem_max_new_tokens": (512, "greedy tokens per memorization prompt"),
    "batch_size": (32, "evaluation batch size"),
    "launcher": ("", "prefix for train.py, e.g. 'torchrun --standalone --nproc_per_node=8'"),
}
# the score each multiple-choice task contributes, as the Open LLM Leaderboard reported them
MC_METRIC = {"arc_challenge": "acc_norm", "arc_easy": "acc_norm", "hellaswag": "acc_norm", "piqa": "acc_norm",
             "openbookqa": "acc_norm", "truthfulqa_mc1": "acc", "truthfulqa_mc2": "acc", "winogrande": "acc",
             "boolq": "acc", "mmlu": "acc"}


class SweepError(ValueError):
    pass


def plw_name(p):
    return f"plw{p:g}"


def read_sweep_settings(config_files):
    """sweep_<name> assignments in the config files (executed the way train.py executes them)."""
    found = {}
    for path in config_files:
        scope = {}
        exec(compile(Path(path).read_text(), str(path), "exec"), {}, scope)
        found.update({k.removeprefix("sweep_"): v for k, v in scope.items() if k.startswith("sweep_")})
    unknown = sorted(set(found) - set(SETTINGS))
    if unknown:
        raise SweepError(f"unknown sweep setting(s) in {', '.join(map(str, config_files))}: "
                         f"{', '.join('sweep_' + k for k in unknown)} (known: {', '.join('sweep_' + k for k in SETTINGS)})")
    return found


def commands(cfg, configs, overrides, s, plw, run_dir, resume):
    """the steps of one run: [(name, output that marks it done, argv)]"""
    py = sys.executable
    train = (shlex.split(s["launcher"]) if s["launcher"] else [py]) + [
        "train.py", *configs, *overrides, f"--prompt_loss_weight={plw!r}", f"--out_dir={run_dir}"]
    if resume:
        train.append("--resume=True")
    steps = [("train", run_dir / "config.json", train)]  # train.py exports config.json last
    if s["tasks"]:
        mc = [py, "eval/mc.py", "--model", str(run_dir), "--tasks", s["tasks"], "--data_dir", s["eval_data"],
              "--batch_size", str(s["batch_size"]), "--output", str(run_dir / "eval_mc.json")]
        steps.append(("mc", run_dir / "eval_mc.json", mc + (["--limit", str(s["mc_limit"])] if s["mc_limit"] else [])))
    if s["mem_n"]:
        steps.append(("memorization", run_dir / "eval_memorization.json", [
            py, "eval/memorization.py", "--model", str(run_dir), "--data", str(cfg["_data_source"]), "--n",
            str(s["mem_n"]), "--max_new_tokens", str(s["mem_max_new_tokens"]), "--batch_size", str(s["batch_size"]),
            "--max_prompt_tokens", str(cfg["max_seq_len"] - 1),  # longer prompts were cut before their completion
            "--seed", str(cfg["seed"]), "--output", str(run_dir / "eval_memorization.json")]))
    steps.append(("distance", run_dir / "eval_distance.json", [
        py, "eval/distance.py", "--model", str(run_dir), "--base", cfg["init_from"],
        "--output", str(run_dir / "eval_distance.json")]))
    return steps


def score_rows(plw, run_dir, dataset):
    """scores.jsonl rows of one finished run, from its evaluation files and log"""
    from eval.analyze import load_log, loss_rsd
    base = {"plw": plw, "dataset": dataset, "run": run_dir.name}
    rows = []
    mc = run_dir / "eval_mc.json"
    if mc.exists():
        for task, r in json.loads(mc.read_text())["results"].items():
            metric = MC_METRIC.get(task, "acc")
            rows.append({**base, "benchmark": task, "score": r[metric], "metric": metric, "group": "mc"})
    mem = run_dir / "eval_memorization.json"
    if mem.exists():
        m = json.loads(mem.read_text())
        for key, name in (("bleu", "memorization_bleu"), ("gen_tokens_mean", "gen_length_tokens"),
                          ("gen_words_mean", "gen_length_words")):
            rows.append({**base, "benchmark": name, "score": m[key], "group": "mechanism"})
    dist = run_dir / "eval_distance.json"
    if dist.exists():
        d = json.loads(dist.read_text())["overall"]
        rows += [{**base, "benchmark": "weight_distance_l2_rel", "score": d["l2_rel"], "group": "mechanism"},
                 {**base, "benchmark": "weight_distance_l1_rel", "score": d["l1_rel"], "group": "mechanism"}]
    log = load_log(run_dir / "log.jsonl")
    for key, name in (("loss", "loss_rsd"), ("completion_loss", "completion_loss_rsd")):
        try:
            rows.append({**base, "benchmark": name, "score": loss_rsd(log, key=key), "group": "mechanism"})
        except ValueError as e:  # e.g. a log written with log_interval > 1, or too short for one window
            print(f"note: {run_dir.name}: no {name}: {e}", file=sys.stderr)
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="train.py config files")
    for name, (default, help) in SETTINGS.items():
        ap.add_argument(f"--{name}", type=type(default), default=None, help=f"{help} (default: {default!r})")
    ap.add_argument("--dry_run", action="store_true", help="print the commands of the steps still to run, run nothing")
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise SweepError(f"unexpected argument {bad[0]!r}: train.py overrides are --key=value")

    import train
    from config import load_config
    cfg = load_config(train.DEFAULTS, args.configs + overrides, ignore=("sweep_",))
    train.check_config(cfg)
    s = {k: d for k, (d, _) in SETTINGS.items()}
    s.update(read_sweep_settings(args.configs))
    s.update({k: v for k, v in vars(args).items() if k in SETTINGS and v is not None})
    try:
        grid = [float(p) for p in str(s["plw"]).split(",")]
    except ValueError:
        raise SweepError(f"--plw must be comma-separated numbers, got {s['plw']!r}") from None
    if not grid or min(grid) < 0:
        raise SweepError(f"--plw must be non-negative numbers, got {s['plw']!r}")
    sweep_dir = Path(s["sweep_dir"] or cfg["out_dir"].rstrip("/") + "_sweep")
    # the training data file as train.py resolves it (memorization reads the records from it); a dry run only
    # names it, where a real run may download or invert it first
    from data.prepare import resolve_dataset, DATASETS, DATA_DIR
    known = DATASETS.get(cfg["dataset"])
    cfg["_data_source"] = (DATA_DIR / known["path"] if args.dry_run and known else resolve_dataset(cfg["dataset"]))
    overrides = [o for o in overrides if not o.startswith(("--prompt_loss_weight=", "--out_dir="))]

    for plw in grid:
        run_dir = sweep_dir / plw_name(plw)
        resume = not (run_dir / "config.json").exists() and bool(train.list_checkpoints(run_dir))
        for name, done, cmd in commands(cfg, args.configs, overrides, s, plw, run_dir, resume):
            if done.exists():
                continue
            line = " ".join(shlex.quote(c) for c in cmd)
            if args.dry_run:
                print(line)
                continue
            print(f"[{plw_name(plw)}] {name}: {line}", file=sys.stderr, flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                raise SweepError(f"{plw_name(plw)}: {name} failed; fix the cause and re-run the sweep, which "
                                 f"continues from here ({line})")
    if args.dry_run:
        return

    from util import atomic_write
    rows = [r for plw in grid for r in score_rows(plw, sweep_dir / plw_name(plw), cfg["dataset"])]
    scores = sweep_dir / "scores.jsonl"
    atomic_write(scores, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))
    print(f"wrote {scores} ({len(rows)} rows)", file=sys.stderr)
    if len(grid) >= 3:
        from eval import analyze
        analyze.main(["--scores", str(scores), "--out", str(sweep_dir / "analysis")])


if __name__ == "__main__":
    from util import cli
    cli(main, "sweep.py")
