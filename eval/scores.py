"""
Score rows of a PLW study and their aggregates: validation and defaults, the w_p transform, the relative score (each
benchmark min-max scaled over a dataset's runs), and one aggregate per run or per condition. Definitions:
docs/analysis.md. analyze.py, stats.py, runtest.py and betareg.py work on what this returns.
"""
import json
import math
import os

import numpy as np

LOG10_2 = math.log10(2)  # exponent of the PLW -> w_p map
PAPER_PLWS = (0.0, 5e-4, 2.236e-3, 0.01, 0.02463, 0.05, 0.1, 0.2463, 0.5, 1.0)  # the paper's grid
DEFAULT_DATASET = "default"
# "gen" is generation of unknown length: older score files, and infer_group's fallback; it is aggregated with
# everything ("all") but belongs to neither of the paper's groups
GROUPS = ("mc", "short_gen", "long_gen", "gen", "mechanism")
AGGREGATED = GROUPS[:-1]  # mechanisms are reported beside the benchmarks, never aggregated
PAPER_GROUPS = {"I": ("mc", "short_gen"), "II": ("long_gen",)}
# the paper's regularizers, then the CPU study's controls (sweep.py: a lower learning rate, fewer steps, the prompts
# as plain text records at text_loss_weight = reg_value)
REGULARIZERS = ("none", "weight_decay", "dropout", "label_smoothing", "minkowski", "learning_rate", "max_iters", "domain")
CONDITION = ("dataset", "model", "regularizer", "reg_value", "plw")  # + seed = one run

# names infer_group recognizes; any other name falls back to "gen"
MC_BENCHMARKS = frozenset({
    "arc_challenge", "arc_easy", "boolq", "hellaswag", "mmlu", "openbookqa", "piqa", "sciq",
    "truthfulqa_mc1", "truthfulqa_mc2", "winogrande",
})
SHORT_GEN_PREFIXES = ("wmt", "truthfulqa_gen")
LONG_GEN_PREFIXES = ("alpaca_eval", "pandalm")
GEN_HINTS = ("gen_", "bleu", "rouge", "length", "win_rate", "alpaca_eval", "pandalm")


# -----------------------------------------------------------------------------
# the w_p transform

def _check_nonneg(x, what):
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{what} must be finite and >= 0, got {x!r}")
    return a


def wp(plw):
    """w_p = PLW ** log10(2). Accepts a number (returns a float) or an array-like (returns an array)."""
    out = _check_nonneg(plw, "PLW") ** LOG10_2
    return float(out) if out.ndim == 0 else out


def plw_from_wp(w):
    """The inverse of wp: PLW = w_p ** (1 / log10(2)) (= 10 ** log2(w_p))."""
    out = _check_nonneg(w, "w_p") ** (1.0 / LOG10_2)
    return float(out) if out.ndim == 0 else out


# -----------------------------------------------------------------------------
# score rows: validation, defaults, de-duplication

def infer_group(benchmark):
    """The group of a benchmark whose row has no "group"; "gen" when the name is not recognized."""
    name = benchmark.lower()
    if name in MC_BENCHMARKS or name.startswith("mmlu_"):
        return "mc"
    if name.startswith(SHORT_GEN_PREFIXES):
        return "short_gen"
    if name.startswith(LONG_GEN_PREFIXES):
        return "long_gen"
    if name.endswith("_rsd") or name.startswith("weight_distance"):
        return "mechanism"
    return "gen"


def is_known_benchmark(benchmark):
    """True when infer_group recognizes the name rather than falling back to its default."""
    name = benchmark.lower()
    return infer_group(name) != "gen" or any(h in name for h in GEN_HINTS)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_row(row, where):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("plw", "benchmark", "score") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    if not _is_number(row["plw"]) or row["plw"] < 0:
        raise ValueError(f"{where}: plw must be a finite number >= 0, got {row['plw']!r}")
    if not isinstance(row["benchmark"], str) or not row["benchmark"]:
        raise ValueError(f"{where}: benchmark must be a non-empty string, got {row['benchmark']!r}")
    if not _is_number(row["score"]):
        raise ValueError(f"{where}: score must be a finite number, got {row['score']!r}")
    for k in ("dataset", "model", "run", "metric"):
        if row.get(k) is not None and not isinstance(row[k], str):
            raise ValueError(f"{where}: {k} must be a string, got {row[k]!r}")
    if row.get("group") is not None and row["group"] not in GROUPS:
        raise ValueError(f"{where}: group must be one of {', '.join(GROUPS)}, got {row['group']!r}")
    if row.get("higher_is_better") is not None and not isinstance(row["higher_is_better"], bool):
        raise ValueError(f"{where}: higher_is_better must be true or false, got {row['higher_is_better']!r}")
    reg = row.get("regularizer") or "none"
    if reg not in REGULARIZERS:
        raise ValueError(f"{where}: regularizer must be one of {', '.join(REGULARIZERS)}, got {reg!r}")
    value = row.get("reg_value")
    if value is not None and (not _is_number(value) or value < 0):
        raise ValueError(f"{where}: reg_value must be a finite number >= 0, got {value!r}")
    if reg == "none" and value:
        raise ValueError(f"{where}: reg_value {value!r} without a regularizer (regularizer is 'none')")
    seed = row.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"{where}: seed must be an integer, got {seed!r}")


def normalize_rows(rows):
    """Validate rows and fill in the defaults (model "", dataset "default", regularizer "none", reg_value 0, seed 0,
    metric "", group inferred, higher_is_better true). A run is its condition and seed: two rows of the same run and
    benchmark are a re-run, and the LAST one in the file wins; every other pair of rows is kept."""
    last = {}
    for i, row in enumerate(rows):
        _check_row(row, f"row {i + 1}")
        r = {"dataset": row.get("dataset") or DEFAULT_DATASET, "model": row.get("model") or "",
             "regularizer": row.get("regularizer") or "none", "reg_value": float(row.get("reg_value") or 0),
             "plw": float(row["plw"]), "seed": row.get("seed") or 0, "benchmark": row["benchmark"],
             "metric": row.get("metric") or "", "score": float(row["score"]),
             "group": row.get("group") or infer_group(row["benchmark"]),
             "higher_is_better": True if row.get("higher_is_better") is None else row["higher_is_better"]}
        if row.get("run") is not None:
            r["run"] = row["run"]
        last[run_key(r) + (r["benchmark"],)] = r  # a re-run overwrites
    # scaling and aggregating a benchmark only make sense if all its rows agree on what it is
    meta = {}
    for r in last.values():
        m = meta.setdefault((r["dataset"], r["benchmark"]), (r["group"], r["higher_is_better"], r["metric"]))
        if m != (r["group"], r["higher_is_better"], r["metric"]):
            raise ValueError(f"dataset {r['dataset']!r}, benchmark {r['benchmark']!r}: rows disagree on "
                             f"group/higher_is_better/metric ({m} vs "
                             f"{(r['group'], r['higher_is_better'], r['metric'])}); give each metric its own "
                             f"benchmark name")
    return sorted(last.values(), key=lambda r: _order(r) + (r["benchmark"],))


def condition_key(r):
    return tuple(r[k] for k in CONDITION)


def run_key(r):
    return condition_key(r) + (r["seed"],)


def _order(r):
    # plain PLW runs first, then the regularizer variants; within each, by PLW
    return (r["dataset"], r["model"], r["regularizer"] != "none", r["regularizer"], r["reg_value"], r["plw"],
            r.get("seed", 0))


def read_jsonl(path, check, what):
    """The JSON objects of a .jsonl file (blank lines skipped); check(row, where) validates each. ValueError naming
    the file and line for a missing file, invalid JSON or a bad row, and for a file without rows."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            check(row, f"{path}:{lineno}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no {what} rows")
    return rows


def load_scores(path):
    """Read scores.jsonl into a list of dicts; bad lines raise ValueError naming the line."""
    return read_jsonl(path, _check_row, "score")


# -----------------------------------------------------------------------------
# relative scores and the aggregates

def relative_scores(rows):
    """
    Per (dataset, benchmark), min-max scale the score into [0, 1] over every run of that dataset (base models,
    PLWs, regularizers and seeds pooled), inverted when higher_is_better is false. Returns the normalized rows
    (mechanism rows left out) with "wp" and "relative" added; "relative" is None for a benchmark with the same score
    in every run (it is excluded from the aggregates).
    """
    by_bench = {}
    for r in normalize_rows(rows):
        if r["group"] != "mechanism":
            by_bench.setdefault((r["dataset"], r["benchmark"]), []).append(r)
    out = []
    for rs in by_bench.values():
        lo = min(r["score"] for r in rs)
        hi = max(r["score"] for r in rs)
        for r in rs:
            rel = None
            if hi > lo:
                rel = (r["score"] - lo) / (hi - lo)
                rel = rel if r["higher_is_better"] else 1.0 - rel
            out.append({**r, "wp": wp(r["plw"]), "relative": rel})
    return sorted(out, key=lambda r: _order(r) + (r["benchmark"],))


def group_members(group):
    """The benchmark groups an aggregate over `group` averages: None = all of AGGREGATED, "I"/"II" = the paper's."""
    if group is None:
        return AGGREGATED
    if group in PAPER_GROUPS:
        return PAPER_GROUPS[group]
    if group in AGGREGATED:
        return (group,)
    raise ValueError(f"aggregate group must be one of {', '.join(AGGREGATED + tuple(PAPER_GROUPS))} or None, "
                     f"got {group!r}")


def _spread(v):
    v = np.asarray(v, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "min": float(v.min()), "max": float(v.max())}


def run_aggregates(rows, group=None):
    """
    Per run (a condition and a seed), the relative aggregate: the mean relative score over the benchmarks of `group`
    that vary; and the simple aggregate, the mean raw score over the same benchmarks. Returns [{"dataset", "model",
    "regularizer", "reg_value", "plw", "seed", "wp", "relative", "simple", "n"}] (n = benchmarks averaged), in the
    table's order. The unit of the run-level test (runtest.py).
    """
    members = group_members(group)
    runs = {}
    for r in relative_scores(rows):
        if r["relative"] is not None and r["group"] in members:
            runs.setdefault(run_key(r), []).append(r)
    return [{**dict(zip(CONDITION + ("seed",), key)), "wp": wp(key[-2]),
             "relative": float(np.mean([r["relative"] for r in rs])), "simple": float(np.mean([r["score"] for r in rs])),
             "n": len(rs)} for key, rs in runs.items()]


def aggregate(rows, group=None):
    """
    Per condition (dataset, model, regularizer, reg_value, PLW), the run aggregates (run_aggregates) averaged over
    seeds, with the seeds' sd (None for one seed), min and max. Returns [{"dataset", "model", "regularizer",
    "reg_value", "plw", "wp", "relative", "sd", "min", "max", "simple", "simple_sd", "seeds", "n"}] in the order of
    the table (plain PLW runs first); n = benchmarks averaged.
    """
    conds = {}
    for a in run_aggregates(rows, group):
        conds.setdefault(tuple(a[k] for k in CONDITION), []).append(a)
    out = []
    for key, v in conds.items():
        rel, simple = _spread([a["relative"] for a in v]), _spread([a["simple"] for a in v])
        out.append({**dict(zip(CONDITION, key)), "wp": wp(key[-1]), "relative": rel["mean"], "sd": rel["sd"],
                    "min": rel["min"], "max": rel["max"], "simple": simple["mean"], "simple_sd": simple["sd"],
                    "seeds": len(v), "n": max(a["n"] for a in v)})
    return sorted(out, key=_order)
