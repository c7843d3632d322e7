"""
Run the paper's experiment: fine-tune one run per condition, evaluate every run, analyze the grid.

    python sweep.py configs/tiny_sweep.py                          # the CPU-sized sweep, a few minutes
    python sweep.py configs/short_plw01.py --plw=0,0.01,0.1,1 --seeds=1,2,3
    python sweep.py configs/short_plw01.py --plw=0.2463 --regularizers=weight_decay=0.1,dropout=0.1,label_smoothing=0.1,minkowski=1e-4
    python sweep.py configs/short_plw01.py --dry_run               # print the commands, for a cluster scheduler
    python sweep.py --help

A condition is (base model, dataset, PLW, regularizer and its value, seed): the grid crosses --models, --datasets,
--plw and --seeds; each --regularizers variant runs at the PLWs of --reg_plw (the paper's comparison: PLW 0 and 1)
beside the plain grid. Per run: train.py, then eval/mc.py, eval/gen.py (short generation), eval/judge.py (long
generation, with --judge), eval/memorization.py, eval/heldout.py (with --heldout: held-out and train completion NLL,
forgetting NLL with --forget, exact match and chrF), eval/distance.py and the loss RSD; each step is skipped when its
output exists, so re-running continues where it stopped. Then SWEEP/scores.jsonl (one row per run and benchmark or
mechanism, with its condition) and eval/analyze.py's table, fits and figures in SWEEP/analysis/.
Settings: the options below, on the command line or as sweep_<name> in the config file (train.py ignores those);
other --key=value (or --key value) arguments are train.py overrides for every run.

Before the first step everything the steps will read is checked (datasets, base models, evaluation data, the judge,
the output directory), and so are the runs already in the sweep directory: a run trained with other settings than
this sweep would use is refused in one line, never mixed into the same conditions. Each step's output lines are
labelled with its run; Ctrl-C (or SIGTERM) lets the running step stop cleanly (train.py checkpoints), then exits
with one line (a second Ctrl-C kills the step; its last checkpoint stays whole).
"""
import filecmp
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

import train
from checkpoint import checkpoint_files, list_checkpoints, read_args
from config import ConfigError, join_values, load_config
from data.prepare import DATA_DIR, DATASETS, format_prompt, load_records, resolve_dataset
from eval import analyze
from eval.stats import LOG_KEYS, load_log, loss_rsd
from tokenizer import resolve as resolve_tokenizer
from util import STOP, DataError, atomic_write, catch_stop_signals, check_writable, cli, eval_data_dir, missing_data

ROOT = Path(__file__).resolve().parent
PAPER_GRID = "0,5e-4,2.236e-3,0.01,0.02463,0.05,0.1,0.2463,0.5,1"
# -----------------------------------------------------------------------------
sweep_plw = PAPER_GRID          # comma-separated prompt loss weights (the paper's 10-value grid)
sweep_seeds = ""                # comma-separated seeds ("" = the config's seed)
sweep_models = ""               # comma-separated base model directories ("" = the config's init_from)
sweep_datasets = ""             # comma-separated datasets ("" = the config's dataset)
sweep_regularizers = ""         # name=value,... from weight_decay, dropout, label_smoothing, minkowski (lambda), and the
                                # controls learning_rate, max_iters, domain (PLW 0's prompts as plain text records,
                                # weighted by the value: text_loss_weight)
sweep_reg_plw = "0,1"           # the PLWs each regularizer variant runs at
sweep_train_n = 0               # > 0: each seed trains on this many records of the dataset, drawn with the seed
                                # (SWEEP/data/): a seed samples the training data, not only its order
sweep_dir = ""                  # where the runs go (default: the config's out_dir + '_sweep')
sweep_tasks = "arc_challenge,piqa,truthfulqa_mc2,winogrande"  # multiple-choice tasks (the paper's four)
sweep_gen_tasks = ""            # short-generation tasks of eval/gen.py, e.g. truthfulqa_gen,wmt16-de-en ("" = none)
sweep_judge = ""                # a judge model directory for AlpacaEval and PandaLM (eval/judge.py; "" = none)
sweep_baseline = ""             # PandaLM's baseline: model_outputs JSON or model directory ("" = no PandaLM)
sweep_eval_data = ""            # directory with <task>.jsonl in the HF-datasets layout ("" = $NANOPLW_DATA/hf or data/eval/hf)
sweep_gen_data = ""             # eval/gen.py's data directory ("" = $NANOPLW_DATA or data/eval: python data/fetch.py)
sweep_mc_limit = 0              # first N documents per multiple-choice task (0: all)
sweep_gen_limit = 0             # first N documents per generation task and of the judged sets (0: all)
sweep_mem_n = 10000             # training prompts for memorization BLEU (the paper: 10,000)
sweep_mem_max_new_tokens = 512  # greedy tokens per memorization prompt
sweep_eval_batch_size = 32      # evaluation batch size
sweep_heldout = ""              # held-out Alpaca JSON for eval/heldout.py (held-out/train NLL, exact match, chrF; "" = none)
sweep_heldout_mc = ""           # eval/heldout.py split's heldout_mc.json: the held-out multiple-choice task ("" = none)
sweep_cloze = ""                # eval/heldout.py base_samples --cloze_context: a cloze in the base model's domain ("" = none)
sweep_primary = ""              # the study's primary measure (e.g. heldout_nll): its paired comparisons with PLW 0 are
                                # the primary family of the analysis (Holm); every other comparison is secondary
sweep_control_ref = ""          # what the controls are held against: a PLW ("0.05") or a control at PLW 0 ("domain=0")
sweep_title = ""                # the study's name in the analysis' figures ("" = the dataset)
sweep_figure_measures = ""      # comma-separated measures for the paired figures' panels ("" = all)
sweep_heldout_train = ""        # the training records whose completion NLL is measured after training ("" = the dataset)
sweep_heldout_train_n = 0       # the first N of them, in file order (0: all)
sweep_forget = ""               # base-model samples (eval/heldout.py base_samples) for the forgetting NLL ("" = none)
sweep_heldout_max_new_tokens = 64  # greedy tokens per held-out prediction
sweep_launcher = ""             # prefix for train.py, e.g. 'torchrun --standalone --nproc_per_node=8'
sweep_dry_run = False           # print the commands of the steps still to run, run nothing
# -----------------------------------------------------------------------------
SWEEP = {k: v for k, v in globals().items() if k.startswith("sweep_")}
REGULARIZERS = {"weight_decay": "weight_decay", "dropout": "dropout", "label_smoothing": "label_smoothing",
                "minkowski": "minkowski_lambda",  # name in score rows -> train.py key; then the controls:
                "learning_rate": "learning_rate", "max_iters": "max_iters", "domain": "text_loss_weight"}
# the score each multiple-choice task contributes, as the Open LLM Leaderboard reported them
MC_METRIC = {"arc_challenge": "acc_norm", "arc_easy": "acc_norm", "hellaswag": "acc_norm", "piqa": "acc_norm",
             "openbookqa": "acc_norm", "truthfulqa_mc1": "acc", "truthfulqa_mc2": "acc", "winogrande": "acc",
             "boolq": "acc", "mmlu": "acc"}
# eval/heldout.py's results -> (key, benchmark, higher_is_better)
HELDOUT_ROWS = (("heldout_nll", "heldout_nll", False), ("heldout_prompt_nll", "heldout_prompt_nll", False),
                ("train_nll", "train_nll", False), ("gap", "overfit_gap", False),
                ("forget_nll", "forget_nll", False), ("exact_match", "heldout_exact_match", True),
                ("chrf", "heldout_chrf", True), ("gen_tokens_mean", "heldout_gen_tokens", True),
                ("mc_acc", "heldout_mc_acc", True), ("mc_acc_norm", "heldout_mc_acc_norm", True),
                ("cloze_acc", "story_cloze_acc", True), ("cloze_acc_norm", "story_cloze", True))
BENCHMARK_ROWS = {"heldout_mc_acc_norm", "story_cloze"}  # multiple-choice tasks scored by acc_norm, as ARC is
# eval/heldout.py's per-record numbers -> (benchmark, record set, numerator, denominator): a bootstrap over records
RECORD_ROWS = (("heldout_nll", "heldout", "completion_sum", "completion_count"),
               ("heldout_prompt_nll", "heldout", "prompt_sum", "prompt_count"),
               ("train_nll", "train", "completion_sum", "completion_count"),
               ("forget_nll", "forget", "sum", "count"),
               ("heldout_mc_acc", "mc", "acc", None), ("heldout_mc_acc_norm", "mc", "acc_norm", None),
               ("story_cloze_acc", "cloze", "acc", None), ("story_cloze", "cloze", "acc_norm", None))


def numbers(name, text, kind=float, required=False):
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"--{name} must be non-negative numbers, got {text!r}")
    if required and not values:
        raise ConfigError(f"--{name} is empty: give at least one value (e.g. --{name}=0,0.1,1)")
    return values


def conditions(c):
    """[(model, dataset, plw, regularizer, value, seed)] of the grid, plain runs first"""
    s = lambda k: c["sweep_" + k]  # noqa: E731
    models = [m for m in s("models").split(",") if m] or [c["init_from"]]
    datasets = [d for d in s("datasets").split(",") if d] or [c["dataset"]]
    seeds = numbers("seeds", s("seeds"), int) or [c["seed"]]
    regs = [("none", 0.0)]
    for item in filter(None, s("regularizers").split(",")):
        name, _, value = item.partition("=")
        if name not in REGULARIZERS:
            raise ConfigError(f"--regularizers: unknown {name!r} (known: {', '.join(REGULARIZERS)})")
        regs.append((name, numbers("regularizers", value)[0] if value else 0.0))
    plain = itertools.product(models, datasets, numbers("plw", s("plw"), required=True), regs[:1], seeds)
    variants = itertools.product(models, datasets, numbers("reg_plw", s("reg_plw"), required=len(regs) > 1), regs[1:],
                                 seeds)
    return [(m, d, p, r, v, seed) for m, d, p, (r, v), seed in itertools.chain(plain, variants)]


def run_name(c, model, dataset, plw, reg, value, seed, grid):
    """plw{P}, with the condition's other coordinates where the grid has more than one value of them or the setting
    names them (--seeds, --datasets, --models): a sweep split over processes (--seeds=1,2 and --seeds=3) then
    names each run as the whole sweep does"""
    name = f"plw{plw:g}" + (f"_{reg}{value:g}" if reg != "none" else "")
    if len({g[5] for g in grid}) > 1 or c["sweep_seeds"]:
        name += f"_seed{seed}"
    if len({g[1] for g in grid}) > 1 or c["sweep_datasets"]:
        name = f"{Path(dataset).stem}/{name}"
    if len({g[0] for g in grid}) > 1 or c["sweep_models"]:
        name = f"{Path(model).name}/{name}"
    return name


def seed_data_path(c, dataset, seed, sweep_dir, domain=False):
    """Where seed_data puts a seed's training records (the dataset itself without sweep_train_n)"""
    if not c["sweep_train_n"]:
        return dataset_file(dataset)
    name = f"{Path(str(dataset)).stem}_n{c['sweep_train_n']}_seed{seed}{'_domain' if domain else ''}.json"
    return Path(sweep_dir) / "data" / name


def seed_data(c, dataset, seed, sweep_dir, domain=False):
    """With sweep_train_n > 0: the seed's training records (sweep_train_n of the dataset's, drawn with the seed, in
    file order), written once to SWEEP/data/; with domain=True, followed by the same records' prompts as plain-text
    records (the domain control: the prompts' English as language-model data, without the prompt loss of an
    instruction example). Without sweep_train_n: the dataset itself."""
    path, n = seed_data_path(c, dataset, seed, sweep_dir, domain), c["sweep_train_n"]
    if not n or path.exists():
        return path
    records = load_records(dataset_file(dataset))
    if n > len(records):
        raise ConfigError(f"--train_n {n} exceeds the {len(records)} records of {dataset}")
    pick = np.sort(np.random.default_rng([seed, 1]).choice(len(records), n, replace=False))
    chosen = [records[i] for i in pick]
    if domain:
        chosen += [{"text": format_prompt(r["instruction"], r["input"])} for r in chosen]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(chosen, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def train_value(key, value):
    """a variant's value as train.py's --key=value wants it (an int key gets an int)"""
    return str(int(value)) if isinstance(train.DEFAULTS[key], int) and not isinstance(train.DEFAULTS[key], bool) \
        else repr(value)


def commands(c, configs, overrides, cond, run_dir, sweep_dir=None):
    """the steps of one run: [(name, output that marks it done, argv)]; sweep_dir holds the seeds' data (SWEEP/data)"""
    model, dataset, plw, reg, value, seed = cond
    s = lambda k: c["sweep_" + k]  # noqa: E731
    py, out, bs = sys.executable, str(run_dir), str(s("eval_batch_size"))
    sweep_dir = Path(sweep_dir or run_dir.parent)
    data = seed_data(c, dataset, seed, sweep_dir)
    train_data = seed_data(c, dataset, seed, sweep_dir, domain=True) if reg == "domain" else data
    train_cmd = (shlex.split(s("launcher")) if s("launcher") else [py]) + [
        "train.py", *configs, *overrides, f"--init_from={model}", f"--dataset={train_data}", f"--seed={seed}",
        f"--prompt_loss_weight={plw!r}", f"--out_dir={run_dir}"] + (
        [f"--{REGULARIZERS[reg]}={train_value(REGULARIZERS[reg], value)}"] if reg != "none" else [])
    if not (run_dir / "config.json").exists() and list_checkpoints(run_dir):
        train_cmd.append("--resume=True")
    steps = [("train", run_dir / "config.json", train_cmd)]  # train.py exports config.json last
    limit = lambda k: ["--limit", str(s(k))] if s(k) else []  # noqa: E731
    if s("tasks"):
        steps.append(("mc", run_dir / "eval_mc.json", [py, "eval/mc.py", "--model", out, "--tasks", s("tasks"),
                      "--data_dir", s("eval_data") or str(eval_data_dir() / "hf"), "--batch_size", bs, "--output", f"{out}/eval_mc.json"] + limit("mc_limit")))
    if s("gen_tasks"):
        steps.append(("gen", run_dir / "eval_gen.json", [py, "eval/gen.py", "--model", out, "--tasks", s("gen_tasks"),
                      "--data_dir", s("gen_data") or str(eval_data_dir()), "--batch_size", bs, "--output", f"{out}/eval_gen.json"] + limit("gen_limit")))
    if s("judge"):
        steps.append(("alpaca_eval", run_dir / "eval_alpaca_eval.json", [
            py, "eval/judge.py", "alpaca_eval", "--outputs", out, "--judge", s("judge"), "--batch_size", bs,
            "--save_outputs", f"{out}/alpaca_eval_outputs.json", "--output", f"{out}/eval_alpaca_eval.json"] + limit("gen_limit")))
        if s("baseline"):
            steps.append(("pandalm", run_dir / "eval_pandalm.json", [
                py, "eval/judge.py", "pandalm", "--model_a", out, "--model_b", s("baseline"), "--judge", s("judge"),
                "--batch_size", bs, "--output", f"{out}/eval_pandalm.json"] + limit("gen_limit")))
    if s("mem_n"):
        steps.append(("memorization", run_dir / "eval_memorization.json", [
            py, "eval/memorization.py", "--model", out, "--data", str(data), "--n", str(s("mem_n")),
            "--max_new_tokens", str(s("mem_max_new_tokens")), "--batch_size", bs,
            "--max_prompt_tokens", str(c["max_seq_len"] - 1),  # longer prompts were cut before their completion
            "--seed", str(seed), "--output", f"{out}/eval_memorization.json"]))
    if s("heldout"):
        steps.append(("heldout", run_dir / "eval_heldout.json", [
            py, "eval/heldout.py", "eval", "--model", out, "--train", s("heldout_train") or str(data),
            "--train_n", str(s("heldout_train_n")), "--heldout", s("heldout"), "--base_samples", s("forget"),
            "--mc", s("heldout_mc"), "--cloze", s("cloze"), "--max_new_tokens", str(s("heldout_max_new_tokens")),
            "--output", f"{out}/eval_heldout.json"]))
    steps.append(("distance", run_dir / "eval_distance.json", [
        py, "eval/distance.py", "--model", out, "--base", model, "--output", f"{out}/eval_distance.json"]))
    return steps


def score_rows(cond, run_dir):
    """scores.jsonl rows of one finished run, from its evaluation files and log, each with its condition"""
    model, dataset, plw, reg, value, seed = cond
    base = {"model": Path(model).name, "dataset": dataset, "plw": plw, "regularizer": reg, "reg_value": value,
            "seed": seed, "run": str(run_dir.name)}
    def read(name):
        try:
            return json.loads((run_dir / name).read_text()) if (run_dir / name).exists() else None
        except (OSError, ValueError) as e:  # a file damaged after its step: say which, and how to redo the step
            raise DataError(f"{run_dir / name}: unreadable ({e}); delete it and re-run the sweep to redo that "
                            f"step") from None
    rows = []
    for task, r in ((read("eval_mc.json") or {}).get("results") or {}).items():
        metric = MC_METRIC.get(task, "acc")
        rows.append({**base, "benchmark": task, "score": r[metric], "metric": metric, "group": "mc"})
    gen = read("eval_gen.json") or {"results": {}}
    for task, r in gen["results"].items():
        metric = gen["config"]["headline"][task]  # truthfulqa_gen: bleu_acc; WMT: corpus BLEU
        rows.append({**base, "benchmark": task, "score": r[metric], "metric": metric, "group": "short_gen"})
    for name in ("alpaca_eval", "pandalm"):
        r = (read(f"eval_{name}.json") or {}).get("results", {}).get(name)
        if r:
            if r["win_rate"] is not None:  # None: AlpacaEval's annotator kept no verdict (all unparsed or too long)
                rows.append({**base, "benchmark": name, "score": r["win_rate"], "metric": "win_rate",
                             "group": "long_gen"})
            if name == "alpaca_eval":  # the paper's Fig. 2d: generation length on AlpacaEval
                rows.append({**base, "benchmark": "alpaca_eval_length_tokens", "score": r["length_tokens"],
                             "group": "mechanism"})
    mem = read("eval_memorization.json")
    if mem:
        for key, name in (("bleu", "memorization_bleu"), ("gen_tokens_mean", "gen_length_tokens"),
                          ("gen_words_mean", "gen_length_words")):
            rows.append({**base, "benchmark": name, "score": mem[key], "group": "mechanism"})
    held = read("eval_heldout.json")
    if held:  # the study's measures (eval/heldout.py): losses are lower-is-better
        for key, name, higher in HELDOUT_ROWS:
            if held.get(key) is not None:  # the held-out multiple-choice task is a benchmark (acc_norm, as ARC's)
                group = "mc" if name in BENCHMARK_ROWS else "mechanism"
                rows.append({**base, "benchmark": name, "score": held[key], "group": group,
                             "higher_is_better": higher, **({"metric": "acc_norm"} if group == "mc" else {})})
    dist = read("eval_distance.json")
    if dist:
        rows += [{**base, "benchmark": f"weight_distance_{k}_rel", "score": dist["overall"][f"{k}_rel"],
                  "group": "mechanism"} for k in ("l2", "l1")]
    log = load_log(run_dir / "log.jsonl")
    for key in LOG_KEYS[:-1]:  # the loss under each normalisation (loss_hf, the paper's, first) and the completion's
        if not any(key in r for r in log):  # a log written before train.py logged every normalisation
            continue
        try:
            rows.append({**base, "benchmark": f"{key}_rsd", "score": loss_rsd(log, key=key), "group": "mechanism"})
        except ValueError as e:  # e.g. a log written with log_interval > 1, or too short for one window
            print(f"note: {run_dir.name}: no {key}_rsd: {e}", file=sys.stderr)
    return rows


def record_rows(cond, run_dir):
    """records.jsonl rows of one finished run: per multiple-choice task (its documents) and per measure of
    RECORD_ROWS, each record's numerator and denominator (the measure is sum num / sum den) and the record set they
    index (a seed's own training records are its own set), for the analysis' bootstrap over records"""
    model, dataset, plw, reg, value, seed = cond
    base = {"model": Path(model).name, "dataset": dataset, "plw": plw, "regularizer": reg, "reg_value": value,
            "seed": seed}
    rows = []
    mc = run_dir / "eval_mc.json"  # a multiple-choice task's documents: its score per document (the same set per run)
    for task, docs in ((json.loads(mc.read_text()).get("samples") or {}) if mc.exists() else {}).items():
        metric = MC_METRIC.get(task, "acc")
        if docs and all(metric in d for d in docs):
            rows.append({**base, "benchmark": task, "records": f"mc:{task}", "num": [d[metric] for d in docs],
                         "den": [1] * len(docs)})
    path = run_dir / "eval_heldout.json"
    recs = (json.loads(path.read_text()).get("records") or {}) if path.exists() else {}
    for name, kind, num, den in RECORD_ROWS:
        if recs.get(kind) and recs[kind].get(num):
            n = recs[kind][num]
            rows.append({**base, "benchmark": name, "records": f"train:seed{seed}" if kind == "train" else kind,
                         "num": [round(v, 6) for v in n], "den": recs[kind][den] if den else [1] * len(n)})
    return rows


# -----------------------------------------------------------------------------
# before the first step: everything the steps read, and the runs already there

def dataset_file(d):
    return DATA_DIR / DATASETS[d]["path"] if d in DATASETS else Path(d)


def check_inputs(c, grid, sweep_dir):
    """Refuse in one line, before any step runs, what a step would fail on later: a dataset, a base model, the
    evaluation data, the judge and its data, the held-out files, an output directory that cannot be written."""
    from eval import gen, mc  # the evaluators' own task tables and file layouts
    s = lambda k: c["sweep_" + k]  # noqa: E731
    for d in dict.fromkeys(g[1] for g in grid):
        if d not in DATASETS and not dataset_file(d).is_file():
            raise ConfigError(f"--datasets: {d}: {'not a file' if Path(d).exists() else 'file not found'} (give an "
                              f"Alpaca-format file or a known dataset: {', '.join(DATASETS)})")
    for m in dict.fromkeys(g[0] for g in grid):
        try:
            read_args(m)
            checkpoint_files(m)
            resolve_tokenizer(c["tokenizer"] or m)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--models / init_from: {m}: {e}") from None
    tasks = [t for t in s("tasks").split(",") if t]
    mc.check_tasks(tasks) if tasks else None
    mc_dir = Path(s("eval_data") or eval_data_dir() / "hf")
    for t in tasks:
        if not (mc_dir / mc.TASKS[t][0]).is_file():
            raise missing_data(mc_dir / mc.TASKS[t][0], f"--tasks {t}", "--eval_data")
    gen_tasks = [t for t in s("gen_tasks").split(",") if t]
    gen.check_tasks(gen_tasks) if gen_tasks else None
    for t in gen_tasks:
        for f in gen.task_files(t, s("gen_data") or eval_data_dir()):
            if not f.is_file():
                raise missing_data(f, f"--gen_tasks {t}", "--gen_data")
    if s("judge"):
        from eval.generate import BENCHMARKS
        from eval.judge import check_judge
        try:
            check_judge(s("judge"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--judge {s('judge')}: {e}") from None
        needed = [BENCHMARKS["alpaca_eval"]] + ([BENCHMARKS["pandalm"]] if s("baseline") else [])
        for f in needed:
            if not Path(f).is_file():
                raise missing_data(f, "the judged benchmarks' instructions", None)
    elif s("baseline"):
        raise ConfigError("--baseline is set but --judge is not: PandaLM needs a judge model")
    if s("baseline") and not Path(s("baseline")).exists():
        raise ConfigError(f"--baseline {s('baseline')}: not found (a model_outputs JSON or a model directory)")
    for key in ("heldout", "heldout_train", "forget", "heldout_mc", "cloze"):
        if s(key) and not Path(s(key)).is_file():
            raise ConfigError(f"--{key} {s(key)}: file not found")
    for d in dict.fromkeys(g[1] for g in grid) if s("train_n") else ():
        if d not in DATASETS and (n := len(load_records(dataset_file(d)))) < s("train_n"):
            raise ConfigError(f"--train_n {s('train_n')} exceeds the {n} records of {d}")
    check_writable(sweep_dir / "scores.jsonl")


# train.py settings that do not change what a run computes (or are the run's own place): they may differ between a
# run already in the sweep directory and this sweep. The global batch is compared as a product, below.
NOT_COMPARED = (set(train.RESUMABLE_CHANGES) - {"max_iters", "epochs"}) | {"out_dir", "resume", "overwrite"}


def expected_config(c, cond, run_dir, sweep_dir):
    """The train.py settings this sweep would run the condition with (commands' train step)"""
    model, dataset, plw, reg, value, seed = cond
    want = {k: c[k] for k in train.DEFAULTS}
    data = seed_data_path(c, dataset, seed, sweep_dir, domain=reg == "domain")
    want.update(init_from=model, dataset=str(data), seed=seed, prompt_loss_weight=plw, out_dir=str(run_dir))
    if reg != "none":
        want[REGULARIZERS[reg]] = value
    return want


def same(a, b):
    """Equal settings: equal values, or two paths to the same file or to files with the same bytes (a run copied
    from another sweep directory, whose seed data lives there)"""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    pa, pb = Path(a), Path(b)
    return pa.resolve() == pb.resolve() or (pa.is_file() and pb.is_file() and filecmp.cmp(pa, pb, shallow=False))


def check_settings(c, cond, run_dir, sweep_dir):
    """Refuse a run in the sweep directory that was started with other train.py settings than this sweep would
    use for it: its finished scores and the new runs' would sit under the same conditions."""
    recorded = run_dir / "run_config.json"
    if not recorded.is_file():
        return
    try:
        was = {**train.DEFAULTS, **json.loads(recorded.read_text())}  # a key added since then had its default
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{recorded}: unreadable ({e}); move that run away to train it again") from None
    want = expected_config(c, cond, run_dir, sweep_dir)
    diff = [f"{k}={was[k]!r} (now {want[k]!r})" for k in train.DEFAULTS
            if k not in NOT_COMPARED and not same(was[k], want[k])]
    world = was.get("world_size", 1) or 1
    G = train.global_batch(c, world)[0]  # what this sweep would train with on the run's number of ranks
    if "global_batch" in was and was["global_batch"] != G:
        diff.append(f"global batch {was['global_batch']} (now {G})")
    if diff:
        raise ConfigError(f"{run_dir} was trained with {'; '.join(diff[:3])}{' and more' * (len(diff) > 3)}: this "
                          f"sweep would mix two settings under one condition. Use another --sweep_dir for the new "
                          f"setting, or give the old one back")


# -----------------------------------------------------------------------------
# running a step: its output lines labelled with the run, signals passed on so that it stops cleanly

def pump(stream, sink, label):
    for line in stream:
        sink.write(f"[{label}] {line}")
        sink.flush()


def run_step(cmd, label):
    """Run one step; its stdout (and its stderr, when ours is not a terminal) comes back line by line, labelled.
    The step runs in its own session: Ctrl-C reaches sweep.py alone, which passes SIGTERM on (train.py then
    checkpoints and exits; an evaluator stops with one line) and waits; a second Ctrl-C kills the step."""
    tty = sys.stderr.isatty()  # a terminal keeps the step's progress bars; a log gets no bar frames, only lines
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None if tty else subprocess.PIPE, text=True,
                         bufsize=1, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pumps = [threading.Thread(target=pump, args=(p.stdout, sys.stdout, label), daemon=True)]
    if not tty:
        pumps.append(threading.Thread(target=pump, args=(p.stderr, sys.stderr, label), daemon=True))
    for t in pumps:
        t.start()
    catch_stop_signals(interrupt=False)  # record Ctrl-C / SIGTERM while the step runs; act on them here
    sent = 0
    try:
        while p.poll() is None:
            if len(STOP) > sent:
                p.send_signal(signal.SIGTERM if sent == 0 else signal.SIGKILL)
                if sent == 0:
                    print(f"sweep.py: stopping {label} (Ctrl-C again kills it; its last checkpoint stays whole)",
                          file=sys.stderr, flush=True)
                sent = len(STOP)
            try:
                p.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for t in pumps:
            t.join(timeout=10)
        catch_stop_signals(interrupt=True)
    if STOP:
        raise KeyboardInterrupt  # report_errors: one line, exit 128 + signal
    return p.returncode


def settings(argv):
    """-> (config: train.py's keys and the sweep_ settings, the config files, the train.py overrides every run gets).
    Sweep settings may be given without their prefix, and as --key value."""
    argv = join_values(argv, {**train.DEFAULTS, **SWEEP, **{k.removeprefix("sweep_"): v for k, v in SWEEP.items()}})
    argv = [f"--sweep_{a[2:]}" if a.startswith("--") and f"sweep_{a[2:].partition('=')[0]}" in SWEEP else a
            for a in argv]
    c = load_config({**train.DEFAULTS, **SWEEP}, argv, source=[__file__, train.__file__],
                    usage="usage: python sweep.py config.py [...] [--setting=value ...] [--train_key=value ...]")
    train.check_config(c)
    configs = [a for a in argv if not a.startswith("--")]
    overrides = [a for a in argv if a.startswith("--") and not a.startswith(("--sweep_", "--prompt_loss_weight=",
                 "--out_dir=", "--init_from=", "--dataset=", "--seed="))]
    return c, configs, overrides


def main(argv):
    c, configs, overrides = settings(argv)
    grid = conditions(c)
    if not grid:
        raise ConfigError(f"--plw must be non-negative numbers, got {c['sweep_plw']!r}")
    sweep_dir = Path(c["sweep_dir"] or c["out_dir"].rstrip("/") + "_sweep")
    check_inputs(c, grid, sweep_dir)
    for cond in grid:
        check_settings(c, cond, sweep_dir / run_name(c, *cond, grid), sweep_dir)
    if not c["sweep_dry_run"]:
        for d in {g[1] for g in grid}:
            resolve_dataset(d)  # a known dataset is downloaded / inverted once, before the runs need it

    for cond in grid:
        run_dir = sweep_dir / run_name(c, *cond, grid)
        label = str(run_dir.relative_to(sweep_dir))
        for name, done, cmd in commands(c, configs, overrides, cond, run_dir, sweep_dir):
            if done.exists():
                continue
            line = " ".join(shlex.quote(str(a)) for a in cmd)
            if c["sweep_dry_run"]:
                print(line)
                continue
            print(f"[{label}] {name}: {line}", file=sys.stderr, flush=True)
            if run_step(cmd, f"{label} {name}") != 0:
                raise ConfigError(f"{run_dir}: {name} failed; fix the cause and re-run the sweep, which continues "
                                  f"from here ({line})")
    if c["sweep_dry_run"]:
        return 0
    rows = [r for cond in grid for r in score_rows(cond, sweep_dir / run_name(c, *cond, grid))]
    scores = sweep_dir / "scores.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(scores, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {scores} ({len(rows)} rows)", file=sys.stderr)
    extra = []
    recs = [r for cond in grid for r in record_rows(cond, sweep_dir / run_name(c, *cond, grid))]
    if recs:
        path = sweep_dir / "records.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in recs)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {path} ({len(recs)} rows: per-record numbers)", file=sys.stderr)
        extra += ["--records", str(path)]
    if c["sweep_primary"]:
        extra += ["--primary", c["sweep_primary"]]
    if c["sweep_control_ref"]:
        extra += ["--control_ref", c["sweep_control_ref"]]
    if c["sweep_title"]:
        extra += ["--title", c["sweep_title"]]
    if c["sweep_figure_measures"]:
        extra += ["--measures", c["sweep_figure_measures"]]
    if len(grid) > 1:  # a grid of fewer than 3 PLWs gets its tables and comparisons, without a curve
        if analyze.main(["--scores", str(scores), "--out", str(sweep_dir / "analysis"), *extra]) != 0:
            raise ConfigError(f"the analysis of {scores} failed (above); the runs and scores are kept")
    return 0


if __name__ == "__main__":
    cli(main, "sweep.py")
