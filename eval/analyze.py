"""
Analyze a prompt-loss-weight (PLW) study: relative and simple aggregates per benchmark group; the test whose unit is
the run (runtest.py: does PLW matter, is the curve concave in w_p = PLW^log10(2), where is the critical PLW); the
paper's beta regression beside it, labelled as the paper's model (betareg.py); a least-squares quadratic as a quick
view; paired differences against PLW 0 over seeds; the paper's regularizer comparison and loss RSD. Definitions,
conventions and what differs from the paper: docs/analysis.md.

    python eval/analyze.py --scores out/sweep/scores.jsonl [--json] [--out DIR] [--log out/plw0/log.jsonl ...]

scores.jsonl, one row per (run, benchmark); only plw, benchmark and score are required:
    {"model": str, "dataset": str, "plw": float, "regularizer": "none" | "weight_decay" | "dropout" |
     "label_smoothing" | "minkowski", "reg_value": float, "seed": int, "run": str, "benchmark": str,
     "metric": str, "score": float, "group": "mc" | "short_gen" | "long_gen" | "mechanism", "higher_is_better"?: bool}

This file assembles the pieces: scores.py (rows, relative scores, aggregates), stats.py (paired differences, the
quadratic, loss RSD), runtest.py, betareg.py, report.py (tables and figures).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python eval/analyze.py` finds util, eval

from eval.betareg import beta_quadratic
from eval.figures import make_figures
from eval.paired import add_two_level, correct, load_records, paired_differences, parse_condition
from eval.report import markdown_controls, markdown_logs, markdown_paired, markdown_table
from eval.runtest import TEST_KEYS, run_level_test
from eval.scores import (AGGREGATED, GROUPS, PAPER_GROUPS, aggregate, condition_key, group_members,
                         is_known_benchmark, load_scores, normalize_rows, relative_scores, run_aggregates, wp)
from eval.stats import fit_quadratic, load_log, log_summary, null_fit
from util import atomic_write, check_writable, cli, write_json

TESTED = ("all",) + tuple(PAPER_GROUPS)  # the groups the run-level test reports, always (a reason when empty)


# -----------------------------------------------------------------------------
# everything per dataset, as one JSON-able dict

def _views(varying):
    """The groups reported beside the aggregate over all benchmarks: the paper's groups present, then each finer
    group whose benchmarks differ from every earlier view's. varying: {benchmark: group} of benchmarks that vary."""
    views, seen = [], []
    for g in tuple(PAPER_GROUPS) + AGGREGATED:
        members = {b for b, bg in varying.items() if bg in group_members(g)}
        if members and members not in seen:
            views.append(g)
            seen.append(members)
    return views


def regularizer_rows(per):
    """The paper's Fig. 8 for one dataset, per base model: each regularizer variant's relative aggregate beside
    plain PLW 0, PLW 1 and the best plain PLW; delta = minus plain PLW 0's. per: {group: {condition key: aggregate}}."""
    out = []
    for m in sorted({key[1] for key in per[None]}):
        conds = [a for key, a in per[None].items() if key[1] == m]
        plain = {a["plw"]: a for a in conds if a["regularizer"] == "none"}
        regs = [a for a in conds if a["regularizer"] != "none"]
        if not regs:
            continue
        best = max(plain.values(), key=lambda a: a["relative"]) if plain else None
        refs = [("PLW 0", plain.get(0.0)), ("PLW 1", plain.get(1.0)),
                (f"best PLW ({best['plw']:g})" if best else "best PLW", best)]
        refs += [(f"{a['regularizer']} {a['reg_value']:g}", a) for a in regs]
        base = plain.get(0.0)
        for label, a in refs:
            if a is None:
                continue
            key = condition_key(a)
            out.append({"label": label, **{k: a[k] for k in ("model", "regularizer", "reg_value", "plw", "relative",
                                                             "sd", "min", "max", "seeds")},
                        **{g: per[g].get(key, {}).get("relative") for g in PAPER_GROUPS},
                        "delta": None if base is None else round(a["relative"] - base["relative"], 12) + 0.0})
    return out


# the loss RSD of the paper's stack (HF Trainer's logged loss; docs/analysis.md) leads the mechanism table
MECHANISM_ORDER = ("loss_hf_rsd", "loss_rsd", "loss_micro_mean_rsd", "loss_nonzero_rsd", "completion_loss_rsd")


def benchmark_meta(drows):
    """{benchmark: {group, higher_is_better, metric}}: benchmarks by group, mechanisms in MECHANISM_ORDER first"""
    def order(r):
        rank = MECHANISM_ORDER.index(r["benchmark"]) if r["benchmark"] in MECHANISM_ORDER else len(MECHANISM_ORDER)
        return GROUPS.index(r["group"]), rank, r["benchmark"]
    return {r["benchmark"]: {"group": r["group"], "higher_is_better": r["higher_is_better"], "metric": r["metric"]}
            for r in sorted(drows, key=order)}


def condition_table(plain, per):
    """One entry per plain-PLW condition (model, PLW; seeds averaged): aggregates over all benchmarks and per group,
    the simple aggregates, the raw scores' seed means."""
    cells = {}
    for r in plain:
        cells.setdefault(condition_key(r), {}).setdefault(r["benchmark"], {})[r["seed"]] = r["score"]
    table = []
    for key, scores in cells.items():  # plain rows are sorted, so are their conditions
        a = per[None].get(key, {})
        entry = {"model": key[1], "plw": key[-1], "wp": wp(key[-1]), "relative": a.get("relative"),
                 "sd": a.get("sd"), "min": a.get("min"), "max": a.get("max"),
                 "seeds": len({s for v in scores.values() for s in v}), "n": a.get("n", 0)}
        entry.update({g: per[g].get(key, {}).get("relative") for g in AGGREGATED + tuple(PAPER_GROUPS)})
        entry["simple"] = {str(g or "all"): per[g].get(key, {}).get("simple") for g in (None,) + tuple(PAPER_GROUPS)}
        entry["scores"] = {b: float(np.mean(list(v.values()))) for b, v in sorted(scores.items())}
        table.append(entry)
    return table


def quadratic_fits(d, table, views):
    """The least-squares quick view: over all benchmarks, and per view"""
    pts = [(e["wp"], e["relative"]) for e in table if e["relative"] is not None]
    try:
        fit = fit_quadratic(*zip(*pts))
    except ValueError as e:  # e.g. only 2 PLW values where a benchmark varies
        raise ValueError(f"dataset {d!r}: {e}") from None
    by_group = {}
    for g in views:
        try:
            by_group[g] = fit_quadratic(*zip(*[(e["wp"], e[g]) for e in table if e[g] is not None]))
        except ValueError as e:
            by_group[g] = null_fit(str(e))
    return fit, by_group


def run_level_tests(rows, d):
    """The run-level test of dataset d's plain runs for all benchmarks and each paper group (runtest.py); a group
    whose runs are those of an earlier one is not refit ("same_as")."""
    tests, seen = {}, {}
    for g in TESTED:
        runs = [a for a in run_aggregates(rows, None if g == "all" else g)
                if a["dataset"] == d and a["regularizer"] == "none"]
        key = tuple(sorted((a["model"], a["plw"], a["seed"], a["n"]) for a in runs))
        if not runs:
            tests[g] = {**dict.fromkeys(TEST_KEYS), "unit": "run", "n_runs": 0,
                        "reason": f"no benchmark of group {g} varies across runs"}
        elif key in seen:
            tests[g] = {**tests[seen[key]], "same_as": seen[key]}
        else:
            tests[g], seen[key] = run_level_test(runs), g
    return tests


def beta_views(prel, views):
    """The paper's beta regression over all benchmarks and per view"""
    beta = {"all": beta_quadratic(prel)}
    for g in views:
        obs = [r for r in prel if r["group"] in group_members(g)]
        # a view with every benchmark (e.g. Group I when all are multiple choice) is the same model: not refit
        beta[g] = {**beta["all"], "same_as": "all"} if len(obs) == len(prel) else beta_quadratic(obs)
    return beta


def analyze_dataset(d, rows, rel, aggs):
    """Everything about dataset d: see analyze()"""
    drows = [r for r in rows if r["dataset"] == d]
    drel = [r for r in rel if r["dataset"] == d]
    plain = [r for r in drows if r["regularizer"] == "none"]
    plws = sorted({r["plw"] for r in plain})
    views = _views({r["benchmark"]: r["group"] for r in drel if r["relative"] is not None})
    if not views:
        raise ValueError(f"dataset {d!r}: no benchmark varies across runs, nothing to aggregate")
    per = {g: {condition_key(a): a for a in aggs[g] if a["dataset"] == d} for g in aggs}
    table = condition_table(plain, per)
    if len(plws) < 3:  # a grid of controls around one PLW: its comparisons, no curve
        few = null_fit(f"a quadratic needs at least 3 distinct PLW values, got {len(plws)} "
                       f"({', '.join(f'{p:g}' for p in plws)})")
        fit, by_group = few, {g: few for g in views}
    else:
        fit, by_group = quadratic_fits(d, table, views)
    return {"benchmarks": benchmark_meta(drows), "excluded": sorted({r["benchmark"] for r in drel if r["relative"] is None}),
            "table": table, "test": run_level_tests(rows, d), "fit": fit, "fit_by_group": by_group,
            "beta": beta_views([r for r in drel if r["regularizer"] == "none"], views),
            "regularizers": regularizer_rows(per)}


def analyze(rows):
    """
    The whole analysis: {"datasets": {name: {"benchmarks", "excluded", "table", "test", "fit", "fit_by_group", "beta",
    "regularizers"}}}. "table" has one entry per plain-PLW condition (model, PLW; seeds averaged) with the relative
    aggregate over all benchmarks ("relative", its seeds' sd/min/max), per group (keys of AGGREGATED and "I", "II"),
    the simple aggregates and the raw scores. "test" ("all", "I", "II") is the run-level test, the primary one;
    "beta" the paper's beta regression; "fit" a least-squares picture; all three on plain-PLW runs only.
    "regularizers" compares the variants (empty without any). Raises ValueError when a dataset has fewer than 3
    plain PLW values or no benchmark that varies.
    """
    rows = normalize_rows(rows)
    rel = relative_scores(rows)
    aggs = {g: aggregate(rows, g) for g in (None,) + AGGREGATED + tuple(PAPER_GROUPS)}
    return {"datasets": {d: analyze_dataset(d, rows, rel, aggs) for d in sorted({r["dataset"] for r in rows})}}


# -----------------------------------------------------------------------------
# command line

def paired_analysis(rows, args):
    """Paired differences against PLW 0 (every condition) and, with --control_ref, the controls against that PLW on
    the primary measure; two-level intervals from --records; Holm within each family"""
    paired = paired_differences(rows)
    ref, base = [], parse_condition(args.control_ref) if args.control_ref else None
    if base and args.primary:
        ref = [e for e in paired_differences(rows, base)
               if e["regularizer"] != "none" and e["benchmark"] == args.primary and e["ci"] is not None]
    add_two_level(paired + ref, load_records(args.records) if args.records else None)
    correct(paired + ref, args.primary, base)
    return paired, ref


def run(args):
    if args.out:  # a directory that cannot be made is named before the work, not as an OS error after it
        check_writable(os.path.join(args.out, "table.md"))
    result, notes = {}, []
    if args.scores:
        rows = load_scores(args.scores)
        if args.only:  # one benchmark's (or a few benchmarks') own analysis
            keep = set(args.only.split(","))
            rows = [r for r in rows if r["benchmark"] in keep]
            if not rows:
                raise ValueError(f"--only {args.only}: no such benchmark in {args.scores}")
        unknown = sorted({r["benchmark"] for r in rows if r.get("group") is None and not is_known_benchmark(r["benchmark"])})
        if unknown:
            notes.append(f"note: no group given for {', '.join(unknown)}; treated as 'gen' (set \"group\" in the scores)")
        result = analyze(rows)
        paired, ref = paired_analysis(rows, args)
        if any(p["ci"] for p in paired):
            result["paired"], result["paired_ref"] = paired, ref
    if args.log:
        result["logs"] = {path: log_summary(load_log(path), args.window) for path in args.log}
    md = "\n".join(filter(None, [markdown_table(result) if "datasets" in result else "",
                                 markdown_paired(result.get("paired")),
                                 markdown_controls(result.get("paired"), result.get("paired_ref"), args.primary,
                                                   parse_condition(args.control_ref) if args.control_ref else None),
                                 markdown_logs(result.get("logs"))]))
    for n in notes:
        print(n, file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else md, end="\n" if args.json else "")
    if args.out:
        atomic_write(os.path.join(args.out, "table.md"), lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
        write_json(os.path.join(args.out, "fit.json"), result)
        written = [os.path.join(args.out, n) for n in ("table.md", "fit.json")]
        if "datasets" in result:
            written += make_figures(result, args.out, args.title, args.primary,
                                    parse_condition(args.control_ref) if args.control_ref else None,
                                    args.measures.split(",") if args.measures else None)
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="Aggregates, the run-level test, the paper's beta regression, paired "
                                            "differences and the regularizer comparison of a PLW study.")
    p.add_argument("--scores", help="scores.jsonl written by the sweep")
    p.add_argument("--records", help="records.jsonl written by the sweep: per-record numbers for two-level intervals")
    p.add_argument("--primary", help="the primary measure (its comparisons with PLW 0 are the primary family)")
    p.add_argument("--control_ref", help="what the controls are held against: a PLW (0.05) or a control at PLW 0 "
                                          "(name=value, e.g. domain=0)")
    p.add_argument("--title", help="the study's name in the figures (default: the dataset)")
    p.add_argument("--measures", help="comma-separated measures for the paired figures' panels (default: all)")
    p.add_argument("--only", help="comma-separated benchmarks: analyze these alone (e.g. one benchmark's own test)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    p.add_argument("--out", help="directory for table.md, fit.json and the PNG figures")
    p.add_argument("--log", action="append", default=[], help="a training log.jsonl to report loss RSD for (repeatable)")
    p.add_argument("--window", type=int, default=5, help="optimizer steps per loss-RSD window (default 5)")
    args = p.parse_args(argv)
    if not args.scores and not args.log:
        p.error("give --scores and/or --log")
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as e:  # bad input: one line, no traceback (sweep.py and the tests call main)
        print(f"analyze.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    cli(main, "analyze.py")
