"""
Analyze a prompt-loss-weight (PLW) study: relative and simple aggregates per benchmark group, a least-squares
quadratic in w_p = PLW^log10(2), a beta regression that tests the quadratic term and puts an interval on the
critical PLW, and the paper's regularizer comparison. Definitions, conventions and what differs from the paper:
docs/analysis.md.

    python eval/analyze.py --scores out/sweep/scores.jsonl [--json] [--out DIR] [--log out/plw0/log.jsonl ...]

scores.jsonl, one row per (run, benchmark); only plw, benchmark and score are required:
    {"model": str, "dataset": str, "plw": float, "regularizer": "none" | "weight_decay" | "dropout" |
     "label_smoothing" | "minkowski", "reg_value": float, "seed": int, "run": str, "benchmark": str,
     "metric": str, "score": float, "group": "mc" | "short_gen" | "long_gen" | "mechanism", "higher_is_better"?: bool}
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python eval/analyze.py` finds util, eval

from eval.betareg import Z95, fit_beta, squeeze, vertex, wald
from util import atomic_write, check_writable, cli, write_json

LOG10_2 = math.log10(2)  # exponent of the PLW -> w_p map
PAPER_PLWS = (0.0, 5e-4, 2.236e-3, 0.01, 0.02463, 0.05, 0.1, 0.2463, 0.5, 1.0)  # the paper's grid
DEFAULT_DATASET = "default"
# "gen" is generation of unknown length: older score files, and infer_group's fallback; it is aggregated with
# everything ("all") but belongs to neither of the paper's groups
GROUPS = ("mc", "short_gen", "long_gen", "gen", "mechanism")
AGGREGATED = GROUPS[:-1]  # mechanisms are reported beside the benchmarks, never aggregated
PAPER_GROUPS = {"I": ("mc", "short_gen"), "II": ("long_gen",)}
REGULARIZERS = ("none", "weight_decay", "dropout", "label_smoothing", "minkowski")
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


def aggregate(rows, group=None):
    """
    Per run, the relative aggregate (mean relative score over the benchmarks of `group` that vary) and the simple
    aggregate (mean raw score over the same benchmarks); then per condition (dataset, model, regularizer,
    reg_value, PLW) the mean over seeds with the seeds' sd (None for one seed), min and max. Returns
    [{"dataset", "model", "regularizer", "reg_value", "plw", "wp", "relative", "sd", "min", "max", "simple",
    "simple_sd", "seeds", "n"}] in the order of the table (plain PLW runs first); n = benchmarks averaged.
    """
    members = group_members(group)
    runs = {}
    for r in relative_scores(rows):
        if r["relative"] is not None and r["group"] in members:
            runs.setdefault(run_key(r), []).append(r)
    conds = {}
    for key, rs in runs.items():
        conds.setdefault(key[:-1], []).append((np.mean([r["relative"] for r in rs]), np.mean([r["score"] for r in rs]),
                                              len(rs)))
    out = []
    for key, v in conds.items():
        rel, simple = _spread([x[0] for x in v]), _spread([x[1] for x in v])
        out.append({**dict(zip(CONDITION, key)), "wp": wp(key[-1]), "relative": rel["mean"], "sd": rel["sd"],
                    "min": rel["min"], "max": rel["max"], "simple": simple["mean"], "simple_sd": simple["sd"],
                    "seeds": len(v), "n": max(x[2] for x in v)})
    return sorted(out, key=_order)


# -----------------------------------------------------------------------------
# paired differences against PLW 0 across seeds

# two-sided 95% t quantiles t_{0.975, df} for df = 1..30 (standard tables, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2,
# to 3 decimals); above 30 the Cornish-Fisher expansion around the normal quantile (error < 1e-3 there)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    """The 97.5% quantile of Student's t with df degrees of freedom (two-sided 95% intervals)."""
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_differences(rows, baseline=0.0):
    """
    For each plain-PLW condition (regularizer none) and benchmark, the score minus the same seed's score at PLW
    `baseline` (same dataset, model, benchmark), with a 95% t interval over seeds: mean ± t_{0.975, n-1} · sd / √n
    (sd: the seeds' sample sd of the differences, ddof 1; no interval for one seed). Returns
    [{"dataset", "model", "benchmark", "group", "higher_is_better", "plw", "seeds", "mean", "sd", "base_mean",
    "diff", "diff_sd", "ci": [lo, hi] | None, "excludes_zero": bool | None}] ("mean"/"sd": the raw scores over
    the paired seeds), baseline rows first (diff 0, no interval); conditions without the baseline are left out.
    """
    rows = [r for r in normalize_rows(rows) if r["regularizer"] == "none"]
    cells = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["model"], r["benchmark"]), {}).setdefault(r["plw"], {})[r["seed"]] = r
    out = []
    for (d, m, b), by_plw in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], GROUPS.index(
            next(iter(next(iter(kv[1].values())).values()))["group"]), kv[0][2])):
        base = by_plw.get(baseline)
        if base is None:
            continue
        for plw in sorted(by_plw):
            seeds = sorted(set(by_plw[plw]) & set(base))
            if not seeds:
                continue
            x = np.array([by_plw[plw][s]["score"] for s in seeds])
            x0 = np.array([base[s]["score"] for s in seeds])
            diff = x - x0
            n = len(seeds)
            sd = float(diff.std(ddof=1)) if n > 1 else None
            ci = None
            if n > 1 and plw != baseline:
                half = t975(n - 1) * sd / math.sqrt(n)
                ci = [float(diff.mean() - half), float(diff.mean() + half)]
            first = by_plw[plw][seeds[0]]
            out.append({"dataset": d, "model": m, "benchmark": b, "group": first["group"],
                        "higher_is_better": first["higher_is_better"], "plw": plw, "seeds": n,
                        "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if n > 1 else None,
                        "base_mean": float(x0.mean()), "diff": float(diff.mean()), "diff_sd": sd, "ci": ci,
                        "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)})
    return out


# -----------------------------------------------------------------------------
# the quadratic fit

def fit_quadratic(x, y):
    """
    Least-squares y = a x^2 + b x + c with x = w_p. Returns a dict: a, b, c, vertex_wp (-b / 2a), critical_plw
    (the vertex mapped back to PLW, or None), concave (a < 0), r2, n (points), wp_range, and reason (None when
    critical_plw is given, else why not). Raises ValueError with fewer than 3 distinct x.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    k = np.unique(x).size
    if k < 3:
        raise ValueError(f"a quadratic fit needs at least 3 distinct PLW values, got {k}")
    A = np.stack([x * x, x, np.ones_like(x)], axis=1)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    a, b, c = (float(v) for v in coef)
    ss_res = float(((y - A @ coef) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    lo, hi = float(x.min()), float(x.max())
    fit = {"a": a, "b": b, "c": c, "vertex_wp": None, "critical_plw": None, "concave": False,
           "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None, "n": int(x.size), "wp_range": [lo, hi],
           "reason": None}
    # lstsq leaves ~1e-16 * |y| of noise in a; below that the data has no curvature to speak of
    if ss_tot == 0 or abs(a) <= 1e-12 * float(np.abs(y).max()):
        fit["reason"] = "no curvature: the scores are flat or linear in w_p, so there is no vertex"
        return fit
    fit["vertex_wp"] = v = -b / (2.0 * a)
    fit["concave"] = a < 0
    if a > 0:
        fit["reason"] = f"not concave (a = {a:+.4g} > 0): the fit has a minimum, not a maximum"
    elif not lo <= v <= hi:
        fit["reason"] = (f"vertex w_p = {v:.4g} lies outside the fitted grid [{lo:.4g}, {hi:.4g}]: "
                         f"the best PLW is at the edge of the grid, not inside it")
    else:
        fit["critical_plw"] = plw_from_wp(v)
    return fit


def _null_fit(reason):
    return {"a": None, "b": None, "c": None, "vertex_wp": None, "critical_plw": None, "concave": None,
            "r2": None, "n": 0, "wp_range": None, "reason": reason}


# -----------------------------------------------------------------------------
# the beta regression: is the quadratic real, and where is its vertex?

BETA_KEYS = ("n", "benchmarks", "models", "b1", "se_b1", "b2", "se_b2", "z", "p", "phi", "loglik", "vertex_wp",
             "vertex_se", "critical_plw", "ci_wp", "ci_plw", "ci_clipped", "reason")


def beta_design(obs):
    """(y, X, column names) of the beta regression on relative scores obs (none None): y squeezed into (0, 1);
    X = intercept (the first benchmark and model), the other benchmarks' and models' offsets, w_p, w_p^2."""
    benches = sorted({r["benchmark"] for r in obs})
    models = sorted({r["model"] for r in obs})
    w = np.array([r["wp"] for r in obs])
    cols = [np.ones_like(w)]
    cols += [np.array([r["benchmark"] == b for r in obs], dtype=np.float64) for b in benches[1:]]
    cols += [np.array([r["model"] == m for r in obs], dtype=np.float64) for m in models[1:]]
    names = ["intercept"] + [f"benchmark[{b}]" for b in benches[1:]] + [f"model[{m}]" for m in models[1:]]
    return squeeze([r["relative"] for r in obs]), np.column_stack(cols + [w, w * w]), names + ["w_p", "w_p^2"]


def beta_quadratic(rel_rows):
    """
    Beta regression of relative scores (rows of relative_scores; None ones are skipped), squeezed into (0, 1):
        logit(mu) = benchmark effects [+ base-model effects] + b1 w_p + b2 w_p^2,   log(phi) = constant
    Returns a dict of BETA_KEYS: the Wald z and p of b2; the vertex w* = -b1 / (2 b2) with a delta-method 95%
    interval clipped to the fitted w_p range, both mapped to PLW. critical_plw (and the interval) only when b2 < 0
    and w* lies in that range; reason says why not otherwise.
    """
    out = dict.fromkeys(BETA_KEYS)
    obs = [r for r in rel_rows if r["relative"] is not None]
    plws = {r["plw"] for r in obs}
    if len(plws) < 3:
        out["reason"] = f"needs at least 3 distinct PLW values with a varying benchmark, got {len(plws)}"
        return out
    y, X, _ = beta_design(obs)
    k = X.shape[1]
    out.update(n=len(obs), benchmarks=len({r["benchmark"] for r in obs}), models=len({r["model"] for r in obs}))
    if len(obs) <= k + 1:
        out["reason"] = f"{len(obs)} scores for {k + 1} parameters"
        return out
    try:
        f = fit_beta(y, X)
    except ValueError as e:
        out["reason"] = str(e)
        return out
    b1, b2 = (float(v) for v in f["params"][-2:])
    se1, se2 = (float(v) for v in f["se"][-2:])
    z, p = wald(b2, se2)
    out.update(b1=b1, se_b1=se1, b2=b2, se_b2=se2, z=z, p=p, phi=f["phi"], loglik=f["loglik"])
    lo, hi = float(X[:, -2].min()), float(X[:, -2].max())
    if b2 >= 0:
        out["reason"] = f"not concave (b2 = {b2:+.3g} >= 0): no maximum inside the grid"
        return out
    v, se, (clo, chi) = vertex(b1, b2, f["cov"][k - 2:k, k - 2:k])
    out.update(vertex_wp=v, vertex_se=se)
    if not lo <= v <= hi:
        out["reason"] = f"vertex w_p = {v:.3g} lies outside the fitted grid [{lo:.3g}, {hi:.3g}]"
        return out
    ci = [max(clo, lo), min(chi, hi)]
    out.update(critical_plw=plw_from_wp(v), ci_wp=ci, ci_plw=[plw_from_wp(c) for c in ci],
               ci_clipped=[bool(clo < lo), bool(chi > hi)])
    return out


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


def analyze(rows):
    """
    The whole analysis: {"datasets": {name: {"benchmarks", "excluded", "table", "fit", "fit_by_group", "beta",
    "regularizers"}}}. "table" has one entry per plain-PLW condition (model, PLW; seeds averaged) with the relative
    aggregate over all benchmarks ("relative", its seeds' sd/min/max), per group (keys of AGGREGATED and "I", "II"),
    the simple aggregates and the raw scores. "fit" and "beta" ("all" and per view) are on plain-PLW runs only;
    "regularizers" compares the variants (empty without any). Raises ValueError when a dataset has fewer than 3
    plain PLW values or no benchmark that varies.
    """
    rows = normalize_rows(rows)
    rel = relative_scores(rows)
    aggs = {g: aggregate(rows, g) for g in (None,) + AGGREGATED + tuple(PAPER_GROUPS)}
    result = {"datasets": {}}
    for d in sorted({r["dataset"] for r in rows}):
        drows = [r for r in rows if r["dataset"] == d]
        drel = [r for r in rel if r["dataset"] == d]
        benchmarks = {}
        for r in sorted(drows, key=lambda r: (GROUPS.index(r["group"]), r["benchmark"])):
            benchmarks[r["benchmark"]] = {"group": r["group"], "higher_is_better": r["higher_is_better"],
                                          "metric": r["metric"]}
        excluded = sorted({r["benchmark"] for r in drel if r["relative"] is None})
        plain = [r for r in drows if r["regularizer"] == "none"]
        plws = sorted({r["plw"] for r in plain})
        if len(plws) < 3:
            raise ValueError(f"dataset {d!r}: a quadratic fit needs at least 3 distinct PLW values, got "
                             f"{len(plws)} ({', '.join(f'{p:g}' for p in plws)})")
        views = _views({r["benchmark"]: r["group"] for r in drel if r["relative"] is not None})
        if not views:
            raise ValueError(f"dataset {d!r}: no benchmark varies across runs, nothing to aggregate")
        per = {g: {condition_key(a): a for a in aggs[g] if a["dataset"] == d} for g in aggs}
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
        pts = [(e["wp"], e["relative"]) for e in table if e["relative"] is not None]
        try:
            fit = fit_quadratic(*zip(*pts))
        except ValueError as e:  # e.g. only 2 PLW values where a benchmark varies
            raise ValueError(f"dataset {d!r}: {e}") from None
        by_group = {}
        for g in views:
            gp = [(e["wp"], e[g]) for e in table if e[g] is not None]
            try:
                by_group[g] = fit_quadratic(*zip(*gp))
            except ValueError as e:
                by_group[g] = _null_fit(str(e))
        prel = [r for r in drel if r["regularizer"] == "none"]
        beta = {"all": beta_quadratic(prel)}
        for g in views:
            obs = [r for r in prel if r["group"] in group_members(g)]
            # a view with every benchmark (e.g. Group I when all are multiple choice) is the same model: not refit
            beta[g] = {**beta["all"], "same_as": "all"} if len(obs) == len(prel) else beta_quadratic(obs)
        result["datasets"][d] = {"benchmarks": benchmarks, "excluded": excluded, "table": table, "fit": fit,
                                 "fit_by_group": by_group, "beta": beta, "regularizers": regularizer_rows(per)}
    return result


# -----------------------------------------------------------------------------
# training-loss stability

def load_log(path):
    """Read a training log.jsonl (one JSON object per logged optimizer step, each with an integer "iter")."""
    def check(row, where):
        if not isinstance(row, dict) or not isinstance(row.get("iter"), int) or isinstance(row["iter"], bool):
            raise ValueError(f"{where}: expected a JSON object with an integer 'iter'")
    return read_jsonl(path, check, "log")


def loss_rsd(log_rows, key="loss", window=5):
    """
    Training-loss stability: the relative standard deviation std/mean of log_rows[key] over non-overlapping
    windows of `window` consecutive optimizer steps (the first window starts at the first logged iter; a trailing
    partial window is dropped), averaged over windows. std is the population std (ddof=0): each window is the
    whole population being described, not a sample. Rows with a repeated iter (a resumed run re-logging steps)
    keep the last one. The iters must be consecutive: a log written with log_interval > 1 is refused, because
    its `window` rows would span window * log_interval steps, not `window`.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 steps, got {window}")
    by_iter = {}
    for r in log_rows:
        if not isinstance(r.get("iter"), int):
            raise ValueError(f"log row without an integer 'iter': {r!r}")
        if key not in r:
            raise ValueError(f"log row at iter {r['iter']} has no {key!r}")
        by_iter[int(r["iter"])] = r[key]
    iters = np.array(sorted(by_iter))
    steps = np.unique(np.diff(iters))
    if steps.size == 1 and steps[0] != 1:
        s = int(steps[0])
        raise ValueError(f"log iters step by {s} (written with log_interval={s}?): {window} logged rows would span "
                         f"{s * window} optimizer steps, not {window}; re-run training with log_interval=1")
    if steps.size > 1:
        i = int(np.argmax(np.diff(iters) != 1))
        raise ValueError(f"log iters are not consecutive: iter {iters[i]} is followed by iter {iters[i + 1]}")
    try:
        v = np.array([by_iter[i] for i in iters], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"log {key!r} values must be numbers") from None
    k = v.size // window
    if k == 0:
        raise ValueError(f"{key}: need at least {window} logged steps for one window, got {v.size}")
    w = v[: k * window].reshape(k, window)
    if not np.isfinite(w).all():
        raise ValueError(f"{key}: non-finite value in the log")
    mean = w.mean(axis=1)
    if (mean <= 0).any():
        raise ValueError(f"{key}: a window has mean <= 0, so its relative standard deviation is undefined")
    return float((w.std(axis=1) / mean).mean())


LOG_KEYS = ("loss", "completion_loss", "prompt_loss")


def log_summary(log_rows, window=5):
    """loss_rsd for each of LOG_KEYS present in the log (None for a key no row has), plus the window count."""
    out = {f"{k}_rsd": (loss_rsd(log_rows, k, window) if any(k in r for r in log_rows) else None) for k in LOG_KEYS}
    out["windows"] = len({r["iter"] for r in log_rows}) // window
    out["window"] = window
    return out


# -----------------------------------------------------------------------------
# Markdown

def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def format_fit(fit, what="rel. aggregate"):
    """One line describing a fit: coefficients, R^2, and the critical PLW or why there is none."""
    if fit["a"] is None:
        return f"{what}: no fit ({fit['reason']})"
    s = (f"{what} ≈ a·w_p² + b·w_p + c with a = {fit['a']:.4g}, b = {fit['b']:.4g}, c = {fit['c']:.4g} "
         f"(R² = {_fmt(fit['r2'], '.3f')}, n = {fit['n']})")
    if fit["critical_plw"] is not None:
        return s + f": vertex w_p = {fit['vertex_wp']:.3f} → critical PLW = {fit['critical_plw']:.3g} (untested)"
    return s + f": no critical PLW ({fit['reason']})"


VIEW_NAMES = {"all": "all benchmarks", "I": "Group I (mc + short_gen)", "II": "Group II (long_gen)"}


def format_beta(b, what):
    """One line: the beta regression's quadratic term, its test and the critical PLW with its interval."""
    if b.get("same_as"):
        return f"{what}: the same scores as {VIEW_NAMES[b['same_as']]}"
    if b["b2"] is None:
        return f"{what}: no beta regression ({b['reason']})"
    s = (f"{what} (n = {b['n']} scores, {_count(b['benchmarks'], 'benchmark')}, {_count(b['models'], 'model')}): "
         f"b1 = {b['b1']:.3g} (SE {b['se_b1']:.2g}), b2 = {b['b2']:.3g} (SE {b['se_b2']:.2g}), "
         f"z = {b['z']:.2f}, p = {b['p']:.3g}")
    s += " (significant at 0.05)" if b["p"] < 0.05 else " (not significant at 0.05)"
    if b["critical_plw"] is None:
        return s + f"; no critical PLW ({b['reason']})"
    lo, hi = b["ci_plw"]
    clipped = " (clipped to the grid)" if any(b["ci_clipped"]) else ""
    crit = f"critical PLW = {b['critical_plw']:.3g}"
    crit = f"**{crit}**" if b["p"] < 0.05 else crit + " (b2 not significant: do not read it as a finding)"
    return s + (f"; {crit}, 95% CI [{lo:.3g}, {hi:.3g}]{clipped} from the "
                f"delta-method interval of the vertex w_p = {b['vertex_wp']:.3f} ± {Z95 * b['vertex_se']:.3f} (95%)")


def _count(n, what):
    return f"{n} {what}" + ("" if n == 1 else "s")


def markdown_regularizers(regs):
    multi = len({r["model"] for r in regs}) > 1
    groups = [g for g in PAPER_GROUPS if any(r[g] is not None for r in regs)]
    header = ((["model"] if multi else []) + ["condition", "PLW", "rel. aggregate", "± sd", "seeds"]
              + [f"rel. {g}" for g in groups] + ["Δ vs PLW 0"])
    lines = ["Regularizers vs PLW (the paper's Fig. 8; relative aggregate over all benchmarks):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * (1 + multi) + "---:|" * (len(header) - 1 - multi)]
    for r in regs:
        cells = ([r["model"]] if multi else []) + [r["label"], f"{r['plw']:g}", _fmt(r["relative"], ".3f"),
                                                   _fmt(r["sd"], ".3f"), str(r["seeds"])]
        cells += [_fmt(r[g], ".3f") for g in groups] + [_fmt(r["delta"], "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown_table(result):
    """Markdown for analyze()'s result: per dataset, one row per plain-PLW condition with raw scores and the
    aggregates, the fits, the beta regressions and the regularizer comparison."""
    lines = []
    datasets = result["datasets"]
    for d, res in datasets.items():
        if len(datasets) > 1 or d != DEFAULT_DATASET:
            lines += [f"### {d}", ""]
        benches = list(res["benchmarks"])
        views = list(res["fit_by_group"])
        simple = [g for g in PAPER_GROUPS if g in views]
        multi = len({e["model"] for e in res["table"]}) > 1
        names = [b + ("" if res["benchmarks"][b]["higher_is_better"] else " ↓") for b in benches]
        header = ((["model"] if multi else []) + ["PLW", "w_p"] + names + ["rel. aggregate", "± sd", "seeds"]
                  + [f"rel. {g}" for g in views] + [f"simple {g}" for g in simple])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * multi + "---:|" * (len(header) - multi)]
        for e in res["table"]:
            cells = (([e["model"]] if multi else []) + [f"{e['plw']:g}", f"{e['wp']:.3f}"]
                     + [_fmt(e["scores"].get(b)) for b in benches]
                     + [_fmt(e["relative"], ".3f"), _fmt(e["sd"], ".3f"), str(e["seeds"])]
                     + [_fmt(e[g], ".3f") for g in views] + [_fmt(e["simple"][g]) for g in simple])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("rel.: each benchmark min-max scaled over all runs of the dataset, then averaged; ± sd: over "
                     "seeds (- for one seed); simple: mean raw score. Group I = mc + short_gen, II = long_gen.  ")
        if any(not res["benchmarks"][b]["higher_is_better"] for b in benches):
            lines.append("↓ lower is better (inverted in the relative scores).  ")
        if res["excluded"]:
            lines.append(f"Same score in every run, left out of the aggregates: {', '.join(res['excluded'])}.  ")
        if len({e["n"] for e in res["table"]}) > 1:
            lines.append("Not every benchmark has a score at every PLW: each aggregate averages the ones present.  ")
        mech = [b for b in benches if res["benchmarks"][b]["group"] == "mechanism"]
        if mech:
            lines.append(f"Mechanism metrics (not aggregated): {', '.join(mech)}.  ")
        lines += ["", "Fit (least squares, a quick view): " + format_fit(res["fit"])]
        lines += [f"- {format_fit(f, 'rel. ' + g)}" for g, f in res["fit_by_group"].items()]
        lines += ["", "Significance (beta regression, logit(mu) = benchmark + b1·w_p + b2·w_p², Wald test of b2):"]
        lines += [f"- {format_beta(b, VIEW_NAMES.get(g, g))}" for g, b in res["beta"].items()]
        lines.append("")
        if res["regularizers"]:
            lines += markdown_regularizers(res["regularizers"])
    return "\n".join(lines)


def markdown_paired(paired, baseline=0.0):
    """Two tables per dataset (and model): the raw mean ± sd over seeds per PLW, and the paired difference against
    PLW `baseline` with its 95% t interval; * marks an interval that excludes zero."""
    if not paired:
        return ""
    lines = []
    keys = sorted({(p["dataset"], p["model"]) for p in paired})
    for d, m in keys:
        ps = [p for p in paired if (p["dataset"], p["model"]) == (d, m)]
        plws = sorted({p["plw"] for p in ps})
        benches = list(dict.fromkeys(p["benchmark"] for p in ps))
        get = {(p["benchmark"], p["plw"]): p for p in ps}
        seeds = sorted({p["seeds"] for p in ps})
        title = f"### {d}" + (f" ({m})" if m else "") + ": paired differences vs PLW " + f"{baseline:g}"
        lines += [title, "", f"Mean ± sd over seeds ({'/'.join(map(str, seeds))} seeds per PLW):", "",
                  "| benchmark | " + " | ".join(f"PLW {p:g}" for p in plws) + " |", "|---|" + "---:|" * len(plws)]
        for b in benches:
            cells = []
            for p in plws:
                e = get.get((b, p))
                cells.append("-" if e is None else f"{e['mean']:.4g}" + (f" ± {e['sd']:.2g}" if e["sd"] is not None
                                                                          else ""))
            arrow = "" if get[(b, next(p for p in plws if (b, p) in get))]["higher_is_better"] else " ↓"
            lines.append(f"| {b}{arrow} | " + " | ".join(cells) + " |")
        others = [p for p in plws if p != baseline]
        lines += ["", f"Difference from PLW {baseline:g} with the same seed, mean [95% CI] "
                  "(t interval over seeds, n − 1 df; * the interval excludes zero):", "",
                  "| benchmark | " + " | ".join(f"PLW {p:g}" for p in others) + " |", "|---|" + "---:|" * len(others)]
        for b in benches:
            cells = []
            for p in others:
                e = get.get((b, p))
                if e is None:
                    cells.append("-")
                elif e["ci"] is None:
                    cells.append(f"{e['diff']:+.3g}")
                else:
                    cells.append(f"{e['diff']:+.3g} [{e['ci'][0]:+.3g}, {e['ci'][1]:+.3g}]"
                                 + ("*" if e["excludes_zero"] else ""))
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_logs(logs):
    """Markdown table of log_summary() results, keyed by log path."""
    if not logs:
        return ""
    window = next(iter(logs.values()))["window"]
    lines = [f"Training-loss RSD (std/mean over non-overlapping {window}-step windows, averaged):", "",
             "| log | " + " | ".join(LOG_KEYS) + " | windows |", "|---|" + "---:|" * (len(LOG_KEYS) + 1)]
    for path, s in logs.items():
        lines.append(f"| {path} | " + " | ".join(_fmt(s[f'{k}_rsd']) for k in LOG_KEYS) + f" | {s['windows']} |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# files and figures

def _slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _plw_axis(ax, table):
    # w_p below, the PLW each grid point came from on top: the fit lives in w_p, the knob people set is PLW
    plws = sorted({e["plw"] for e in table})
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks([wp(p) for p in plws])
    top.set_xticklabels([f"{p:g}" for p in plws], fontsize=7, rotation=90)
    top.set_xlabel("PLW")
    ax.set_xlabel("w_p = PLW^log10(2)")


def fit_figure(Figure, d, res):
    """relative aggregate (and per group) vs w_p with the fitted quadratics and the beta regression's vertex"""
    table = res["table"]
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")  # constrained: room for the twin PLW axis
    ax = fig.add_subplot()
    fits = [("relative", "rel. aggregate", res["fit"], "black")]
    fits += [(g, f"rel. {g}", f, f"C{i}") for i, (g, f) in enumerate(res["fit_by_group"].items())]
    for col, label, fit, color in fits:
        main = col == "relative"
        pts = [(e["wp"], e[col]) for e in table if e[col] is not None]
        if not pts:
            continue
        ax.plot(*zip(*pts), "o", color=color, label=label, ms=5 if main else 3.5, alpha=1 if main else 0.7)
        if fit["a"] is not None:
            xs = np.linspace(*fit["wp_range"], 201)
            ax.plot(xs, fit["a"] * xs**2 + fit["b"] * xs + fit["c"], "-", color=color, lw=1.8 if main else 1,
                    alpha=1 if main else 0.7)
    b = res["beta"]["all"]
    if b["critical_plw"] is not None:
        ax.axvline(b["vertex_wp"], ls="--", color="gray", lw=1,
                   label=f"critical PLW (beta) = {b['critical_plw']:.3g}, p = {b['p']:.2g}")
        ax.axvspan(*b["ci_wp"], color="gray", alpha=0.12)
    ax.set_ylabel("relative score (min-max per benchmark)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _plw_axis(ax, table)
    fig.suptitle(f"{d}: relative score vs w_p", fontsize=10)
    return fig


def mechanism_figure(Figure, d, res, mech):
    """each mechanism metric vs PLW, one line per base model"""
    table = res["table"]
    cols = min(4, len(mech))  # a grid, so that many metrics stay readable
    rows = -(-len(mech) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
    for i, name in enumerate(mech):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, m in enumerate(sorted({e["model"] for e in table})):
            pts = [(e["wp"], e["scores"][name]) for e in table if e["model"] == m and name in e["scores"]]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{j + 2}", ms=4, label=m or None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        _plw_axis(ax, table)
    fig.suptitle(f"{d}: mechanism metrics vs PLW", fontsize=10)
    return fig


def regularizer_figure(Figure, d, regs):
    """the paper's Fig. 8: each regularizer variant's relative aggregate beside plain PLW 0, 1 and the best PLW"""
    fig = Figure(figsize=(6.4, 0.9 + 0.32 * len(regs)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(regs))[::-1]
    labels = [(f"{r['model']}: " if r["model"] else "") + r["label"] + ("" if r["label"].startswith(("PLW", "best"))
                                                                         else f" @ PLW {r['plw']:g}") for r in regs]
    ax.barh(y, [r["relative"] for r in regs], xerr=[r["sd"] or 0 for r in regs],
            color=["gray" if r["regularizer"] == "none" else "tab:blue" for r in regs])
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("relative aggregate (± sd over seeds)")
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{d}: regularizers vs PLW", fontsize=10)
    return fig


def paired_figures(Figure, d, paired):
    """(metrics figure, differences figure) of one dataset: each benchmark vs w_p with every seed's score and the
    mean; and its difference from PLW 0 with the 95% t interval."""
    benches = list(dict.fromkeys(p["benchmark"] for p in paired))
    cols = min(4, len(benches))
    rows = -(-len(benches) // cols)
    figs = []
    for kind in ("metrics", "paired"):
        fig = Figure(figsize=(3.6 * cols, 3.0 * rows), layout="constrained")
        for i, b in enumerate(benches):
            ax = fig.add_subplot(rows, cols, i + 1)
            for j, m in enumerate(sorted({p["model"] for p in paired})):
                ps = sorted((p for p in paired if p["benchmark"] == b and p["model"] == m), key=lambda p: p["plw"])
                x = [wp(p["plw"]) for p in ps]
                if kind == "metrics":
                    lo = [p["mean"] - (p["sd"] or 0) for p in ps]
                    hi = [p["mean"] + (p["sd"] or 0) for p in ps]
                    ax.fill_between(x, lo, hi, color=f"C{j}", alpha=0.2, lw=0)
                    ax.plot(x, [p["mean"] for p in ps], "o-", color=f"C{j}", ms=3.5)
                else:
                    err = np.array([[p["diff"] - p["ci"][0], p["ci"][1] - p["diff"]] if p["ci"] else [0, 0]
                                    for p in ps]).T
                    ax.errorbar(x, [p["diff"] for p in ps], yerr=err, fmt="o-", color=f"C{j}", ms=3.5, capsize=3)
                    ax.axhline(0, color="gray", lw=0.8)
            ax.set_title(b + ("" if ps[0]["higher_is_better"] else " ↓") + (" − PLW 0" if kind == "paired" else ""),
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.set_xlabel("w_p = PLW^log10(2)", fontsize=8)
            ax.set_xticks([wp(p) for p in sorted({p["plw"] for p in paired})])
            ax.set_xticklabels([f"{p:g}" for p in sorted({p["plw"] for p in paired})], fontsize=6, rotation=90)
        fig.suptitle(f"{d}: " + ("mean ± sd over seeds vs PLW (x: PLW at w_p spacing)" if kind == "metrics" else
                                 "difference from PLW 0 (same seed), 95% t interval over seeds"), fontsize=10)
        figs.append(fig)
    return figs


def make_figures(result, out_dir):
    """
    PNGs per dataset: fit_<dataset>.png (relative aggregate, per group, and their fitted quadratics vs w_p),
    mechanism_<dataset>.png when there are mechanism rows (each vs PLW) and regularizers_<dataset>.png when there
    are regularizer runs (the paper's Fig. 8). Returns the paths written, or [] with a one-line note on stderr when
    matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to leak
    except ImportError:
        print("note: matplotlib is not installed, no figures (pip install matplotlib)", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for d, res in result["datasets"].items():
        mech = [b for b, m in res["benchmarks"].items() if m["group"] == "mechanism"]
        figs = [(f"fit_{_slug(d)}.png", fit_figure(Figure, d, res))]
        figs += [(f"mechanism_{_slug(d)}.png", mechanism_figure(Figure, d, res, mech))] if mech else []
        figs += [(f"regularizers_{_slug(d)}.png", regularizer_figure(Figure, d, res["regularizers"]))
                 ] if res["regularizers"] else []
        paired = [p for p in result.get("paired") or [] if p["dataset"] == d]
        if paired and any(p["ci"] for p in paired):
            mfig, pfig = paired_figures(Figure, d, paired)
            figs += [(f"metrics_{_slug(d)}.png", mfig), (f"paired_{_slug(d)}.png", pfig)]
        for name, fig in figs:
            path = os.path.join(out_dir, name)
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
            written.append(path)
    return written


# -----------------------------------------------------------------------------
# command line

def run(args):
    if args.out:  # a directory that cannot be made is named before the work, not as an OS error after it
        check_writable(os.path.join(args.out, "table.md"))
    result = {}
    notes = []
    if args.scores:
        rows = load_scores(args.scores)
        unknown = sorted({r["benchmark"] for r in rows if r.get("group") is None and not is_known_benchmark(r["benchmark"])})
        if unknown:
            notes.append(f"note: no group given for {', '.join(unknown)}; treated as 'gen' (set \"group\" in the scores)")
        result = analyze(rows)
        paired = paired_differences(rows)
        if any(p["ci"] for p in paired):
            result["paired"] = paired
    if args.log:
        result["logs"] = {path: log_summary(load_log(path), args.window) for path in args.log}
    md = "\n".join(filter(None, [markdown_table(result) if "datasets" in result else "",
                                 markdown_paired(result.get("paired")), markdown_logs(result.get("logs"))]))
    for n in notes:
        print(n, file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else md, end="\n" if args.json else "")
    if args.out:
        atomic_write(os.path.join(args.out, "table.md"), lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
        write_json(os.path.join(args.out, "fit.json"), result)
        written = [os.path.join(args.out, n) for n in ("table.md", "fit.json")]
        if "datasets" in result:
            written += make_figures(result, args.out)
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="Aggregates, quadratic fit, beta regression and critical PLW of a PLW "
                                            "study, and its regularizer comparison.")
    p.add_argument("--scores", help="scores.jsonl written by the sweep")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    p.add_argument("--out", help="directory for table.md, fit.json and the PNG figures")
    p.add_argument("--log", action="append", default=[], help="a training log.jsonl to report loss RSD for (repeatable)")
    p.add_argument("--window", type=int, default=5, help="optimizer steps per loss-RSD window (default 5)")
    args = p.parse_args(argv)
    if not args.scores and not args.log:
        p.error("give --scores and/or --log")
    try:
        return run(args)
    except (OSError, ValueError) as e:  # bad input: one line, no traceback (sweep.py and the tests call main)
        print(f"analyze.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    cli(main, "analyze.py")
