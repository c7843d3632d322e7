"""
Analyze a prompt-loss-weight (PLW) sweep: relative benchmark scores, a quadratic in w_p, and the critical PLW.

    python eval/analyze.py --scores out/sweep/scores.jsonl [--json] [--out DIR] [--log out/plw0/log.jsonl ...]

Huerta-Enochian & Ko (2024) sweep PLW over a roughly log-spaced grid from 0 to 1 and analyze it in the coordinate
    w_p = PLW ** log10(2)    (equivalently 2 ** log10(PLW); w_p(0) = 0, w_p(0.01) = 0.25, w_p(0.1) = 0.5, w_p(1) = 1)
in which that grid is roughly evenly spaced. On short-completion data the relative benchmark score is a negative
quadratic in w_p; mapping the fitted vertex back, PLW = w_p ** (1 / log10(2)), gives the critical PLW
(the paper: vertex w_p = 0.652 -> PLW = 0.242).

Input, scores.jsonl (written by sweep.py), one JSON object per line:
    {"plw": float, "benchmark": str, "score": float,
     "dataset"?: str, "group"?: "mc" | "gen" | "mechanism", "higher_is_better"?: bool, "run"?: str}
Conventions (all in one place, because each one changes the numbers):
  - Duplicates: rows with the same (dataset, plw, benchmark) are a re-run, so the LAST one in the file wins.
  - dataset: rows without one belong to the dataset "default". Everything (scaling, aggregate, fit) is per dataset.
  - group: rows without one get infer_group(benchmark): a known multiple-choice task -> "mc"; "*_rsd" or
    "weight_distance*" -> "mechanism"; anything else -> "gen". The default is "gen", not "mc", because the
    multiple-choice tasks are a small known set (lm-eval accuracies), while generation metrics are open-ended
    (BLEU, ROUGE, lengths, judge win rates). The CLI prints a note for names it had to guess.
  - higher_is_better defaults to true; a benchmark with false is inverted after scaling, so a relative score is
    always "1 = the best PLW for this benchmark, 0 = the worst".
  - Relative score: per (dataset, benchmark), min-max scaled across PLW values: (s - min) / (max - min).
    A benchmark whose score is the same at every PLW carries no information about PLW: its relative score is
    None and it is EXCLUDED from the aggregate (listed in the table notes). Scoring it 0.5 instead would shrink the
    aggregate towards 0.5 but, with full coverage, leave the fitted vertex unchanged (an affine map of y).
  - Relative aggregate: at each PLW, the mean of the relative scores of the benchmarks scored there, over groups
    "mc" and "gen" (also per group). "mechanism" rows (weight distance, loss RSD) are never aggregated; they are
    tabulated and plotted against PLW.
  - Fit: least squares y = a w_p^2 + b w_p + c on the relative aggregate (one point per PLW). With the same
    benchmarks at every PLW this equals the fit to all (benchmark, PLW) points, since those have the same means.
    critical_plw is reported only when a < 0 (concave) and the vertex lies inside the fitted w_p range (the paper's
    grid: [0, 1]); otherwise it is None and `reason` says why.

Training-loss stability (the paper's mechanism check) comes from a run's log.jsonl, one JSON object per logged
optimizer step ({"iter", "loss", "prompt_loss", "completion_loss", ...}): see loss_rsd.

Runtime dependencies: stdlib and numpy; matplotlib only for figures and model.atomic_write (torch) only for --out,
both imported when used.
"""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's model.atomic_write

LOG10_2 = math.log10(2)  # exponent of the PLW -> w_p map
PAPER_PLWS = (0.0, 5e-4, 2.236e-3, 0.01, 0.02463, 0.05, 0.1, 0.2463, 0.5, 1.0)  # the paper's grid
DEFAULT_DATASET = "default"
GROUPS = ("mc", "gen", "mechanism")
AGGREGATED = ("mc", "gen")  # groups that enter the relative aggregate

# names infer_group recognizes; any other name falls back to "gen" (see the docstring for why not "mc")
MC_BENCHMARKS = frozenset({
    "arc_challenge", "arc_easy", "boolq", "hellaswag", "mmlu", "openbookqa", "piqa", "sciq",
    "truthfulqa_mc1", "truthfulqa_mc2", "winogrande",
})
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
    if row.get("dataset") is not None and not isinstance(row["dataset"], str):
        raise ValueError(f"{where}: dataset must be a string, got {row['dataset']!r}")
    if row.get("group") is not None and row["group"] not in GROUPS:
        raise ValueError(f"{where}: group must be one of {', '.join(GROUPS)}, got {row['group']!r}")
    if row.get("higher_is_better") is not None and not isinstance(row["higher_is_better"], bool):
        raise ValueError(f"{where}: higher_is_better must be true or false, got {row['higher_is_better']!r}")


def normalize_rows(rows):
    """Validate rows, fill in dataset/group/higher_is_better, and keep the last row per (dataset, plw, benchmark)."""
    last = {}
    for i, row in enumerate(rows):
        _check_row(row, f"row {i + 1}")
        r = {
            "dataset": row.get("dataset") or DEFAULT_DATASET,
            "plw": float(row["plw"]),
            "benchmark": row["benchmark"],
            "score": float(row["score"]),
            "group": row.get("group") or infer_group(row["benchmark"]),
            "higher_is_better": True if row.get("higher_is_better") is None else row["higher_is_better"],
        }
        if row.get("run") is not None:
            r["run"] = row["run"]
        last[(r["dataset"], r["plw"], r["benchmark"])] = r  # a re-run overwrites
    # scaling and aggregating a benchmark only make sense if all its rows agree on what it is
    meta = {}
    for r in last.values():
        m = meta.setdefault((r["dataset"], r["benchmark"]), (r["group"], r["higher_is_better"]))
        if m != (r["group"], r["higher_is_better"]):
            raise ValueError(f"dataset {r['dataset']!r}, benchmark {r['benchmark']!r}: rows disagree on "
                             f"group/higher_is_better ({m} vs {(r['group'], r['higher_is_better'])})")
    return sorted(last.values(), key=lambda r: (r["dataset"], r["plw"], r["benchmark"]))


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
# relative scores and the aggregate

def relative_scores(rows):
    """
    Per (dataset, benchmark), min-max scale the score across PLW values into [0, 1], inverted when
    higher_is_better is false. Returns the normalized rows (mechanism rows left out) with "wp" and "relative"
    added; "relative" is None for a benchmark with the same score at every PLW (it is excluded from the aggregate).
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
    return sorted(out, key=lambda r: (r["dataset"], r["plw"], r["benchmark"]))


def aggregate(rows, group=None):
    """
    The relative aggregate: per (dataset, PLW), the mean relative score over benchmarks (of `group`, if given:
    "mc" or "gen"). Returns [{"dataset", "plw", "wp", "relative", "n"}] sorted by dataset then PLW; n is how
    many benchmarks were averaged.
    """
    if group is not None and group not in AGGREGATED:
        raise ValueError(f"aggregate group must be one of {', '.join(AGGREGATED)} or None, got {group!r}")
    cells = {}
    for r in relative_scores(rows):
        if r["relative"] is not None and group in (None, r["group"]):
            cells.setdefault((r["dataset"], r["plw"]), []).append(r["relative"])
    return [{"dataset": d, "plw": p, "wp": wp(p), "relative": float(np.mean(v)), "n": len(v)}
            for (d, p), v in sorted(cells.items())]


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
# everything per dataset, as one JSON-able dict

def analyze(rows):
    """
    The whole analysis: {"datasets": {name: {"fit", "fit_by_group", "benchmarks", "excluded", "table"}}}.
    "fit" is on the relative aggregate over mc + gen; "table" has one entry per PLW (ascending) with raw scores.
    Raises ValueError when a dataset has fewer than 3 PLW values or no benchmark that varies with PLW.
    """
    rows = normalize_rows(rows)
    rel = relative_scores(rows)
    aggs = {g: aggregate(rows, g) for g in (None,) + AGGREGATED}
    result = {"datasets": {}}
    for d in sorted({r["dataset"] for r in rows}):
        drows = [r for r in rows if r["dataset"] == d]
        benchmarks = {}
        for r in sorted(drows, key=lambda r: (GROUPS.index(r["group"]), r["benchmark"])):
            benchmarks[r["benchmark"]] = {"group": r["group"], "higher_is_better": r["higher_is_better"]}
        excluded = sorted({r["benchmark"] for r in rel if r["dataset"] == d and r["relative"] is None})
        per = {g: {a["plw"]: a for a in aggs[g] if a["dataset"] == d} for g in aggs}
        plws = sorted({r["plw"] for r in drows})
        if len(plws) < 3:
            raise ValueError(f"dataset {d!r}: a quadratic fit needs at least 3 distinct PLW values, got "
                             f"{len(plws)} ({', '.join(f'{p:g}' for p in plws)})")
        table = []
        for p in plws:
            entry = {"plw": p, "wp": wp(p), "relative": per[None].get(p, {}).get("relative"),
                     "n": per[None].get(p, {}).get("n", 0)}
            for g in AGGREGATED:
                entry[g] = per[g].get(p, {}).get("relative")
            entry["scores"] = {r["benchmark"]: r["score"] for r in drows if r["plw"] == p}
            table.append(entry)
        pts = [(e["wp"], e["relative"]) for e in table if e["relative"] is not None]
        if not pts:
            raise ValueError(f"dataset {d!r}: no mc/gen benchmark varies with PLW, nothing to aggregate")
        try:
            fit = fit_quadratic(*zip(*pts))
        except ValueError as e:  # e.g. only 2 PLW values where a benchmark varies
            raise ValueError(f"dataset {d!r}: {e}") from None
        by_group = {}
        for g in AGGREGATED:
            gp = [(e["wp"], e[g]) for e in table if e[g] is not None]
            if any(b["group"] == g for b in benchmarks.values()):
                try:
                    by_group[g] = fit_quadratic(*zip(*gp)) if gp else _null_fit(f"no {g} benchmark varies with PLW")
                except ValueError as e:
                    by_group[g] = _null_fit(str(e))
        result["datasets"][d] = {"fit": fit, "fit_by_group": by_group, "benchmarks": benchmarks,
                                 "excluded": excluded, "table": table}
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
        return s + f": vertex w_p = {fit['vertex_wp']:.3f} → **critical PLW = {fit['critical_plw']:.3g}**"
    return s + f": no critical PLW ({fit['reason']})"


def markdown_table(result):
    """Markdown for analyze()'s result: per dataset, one row per PLW with raw scores and relative aggregates."""
    lines = []
    datasets = result["datasets"]
    for d, res in datasets.items():
        if len(datasets) > 1 or d != DEFAULT_DATASET:
            lines += [f"### {d}", ""]
        benches = list(res["benchmarks"])
        groups = [g for g in AGGREGATED if g in res["fit_by_group"]]
        names = [b + ("" if res["benchmarks"][b]["higher_is_better"] else " ↓") for b in benches]
        header = ["PLW", "w_p"] + names + ["rel. aggregate"] + [f"rel. {g}" for g in groups]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for e in res["table"]:
            cells = [f"{e['plw']:g}", f"{e['wp']:.3f}"] + [_fmt(e["scores"].get(b)) for b in benches]
            cells += [_fmt(e["relative"], ".3f")] + [_fmt(e[g], ".3f") for g in groups]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(not res["benchmarks"][b]["higher_is_better"] for b in benches):
            lines.append("↓ lower is better (inverted in the relative scores).  ")
        if res["excluded"]:
            lines.append(f"Same score at every PLW, left out of the aggregate: {', '.join(res['excluded'])}.  ")
        if len({e["n"] for e in res["table"]}) > 1:
            lines.append("Not every benchmark has a score at every PLW: each aggregate averages the ones present.  ")
        mech = [b for b in benches if res["benchmarks"][b]["group"] == "mechanism"]
        if mech:
            lines.append(f"Mechanism metrics (not aggregated): {', '.join(mech)}.  ")
        lines += ["", "Fit: " + format_fit(res["fit"])]
        lines += [f"- {format_fit(f, 'rel. ' + g)}" for g, f in res["fit_by_group"].items()]
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
    x = [e["wp"] for e in table]
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(x)
    top.set_xticklabels([f"{e['plw']:g}" for e in table], fontsize=7, rotation=90)
    top.set_xlabel("PLW")
    ax.set_xlabel("w_p = PLW^log10(2)")


def make_figures(result, out_dir):
    """
    PNGs per dataset: fit_<dataset>.png (relative aggregate, per group, and their fitted quadratics vs w_p) and,
    when there are mechanism rows, mechanism_<dataset>.png (each mechanism metric vs PLW). Returns the paths
    written, or [] with a one-line note on stderr when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to leak
    except ImportError:
        print("note: matplotlib is not installed, no figures (pip install matplotlib)", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        from util import atomic_write
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
        written.append(path)

    colors = {None: "black", "mc": "tab:blue", "gen": "tab:orange"}
    for d, res in result["datasets"].items():
        table = res["table"]
        fig = Figure(figsize=(6.4, 4.6), layout="constrained")  # constrained: room for the twin PLW axis
        ax = fig.add_subplot()
        fits = [(None, "rel. aggregate", "relative", res["fit"])]
        fits += [(g, f"rel. {g}", g, f) for g, f in res["fit_by_group"].items()]
        for g, label, col, fit in fits:
            pts = [(e["wp"], e[col]) for e in table if e[col] is not None]
            if not pts:
                continue
            ax.plot(*zip(*pts), "o", color=colors[g], label=label, ms=5 if g is None else 3.5,
                    alpha=1 if g is None else 0.7)
            if fit["a"] is not None:
                xs = np.linspace(*fit["wp_range"], 201)
                ax.plot(xs, fit["a"] * xs**2 + fit["b"] * xs + fit["c"], "-", color=colors[g],
                        lw=1.8 if g is None else 1, alpha=1 if g is None else 0.7)
        if res["fit"]["critical_plw"] is not None:
            ax.axvline(res["fit"]["vertex_wp"], ls="--", color="gray", lw=1,
                       label=f"critical PLW = {res['fit']['critical_plw']:.3g}")
        ax.set_ylabel("relative score (min-max per benchmark)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        _plw_axis(ax, table)
        fig.suptitle(f"{d}: relative score vs w_p", fontsize=10)
        save(fig, f"fit_{_slug(d)}.png")

        mech = [b for b, m in res["benchmarks"].items() if m["group"] == "mechanism"]
        if mech:
            cols = min(4, len(mech))  # a grid, so that many metrics stay readable
            rows = -(-len(mech) // cols)
            fig = Figure(figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
            for i, b in enumerate(mech):
                ax = fig.add_subplot(rows, cols, i + 1)
                pts = [(e["wp"], e["scores"][b]) for e in table if b in e["scores"]]
                ax.plot(*zip(*pts), "o-", color="tab:green", ms=4)
                ax.set_ylabel(b)
                ax.grid(alpha=0.3)
                _plw_axis(ax, table)
            fig.suptitle(f"{d}: mechanism metrics vs PLW", fontsize=10)
            save(fig, f"mechanism_{_slug(d)}.png")
    return written


# -----------------------------------------------------------------------------
# command line

def run(args):
    result = {}
    notes = []
    if args.scores:
        rows = load_scores(args.scores)
        unknown = sorted({r["benchmark"] for r in rows if r.get("group") is None and not is_known_benchmark(r["benchmark"])})
        if unknown:
            notes.append(f"note: no group given for {', '.join(unknown)}; treated as 'gen' (set \"group\" in the scores)")
        result = analyze(rows)
    if args.log:
        result["logs"] = {path: log_summary(load_log(path), args.window) for path in args.log}
    md = "\n".join(filter(None, [markdown_table(result) if "datasets" in result else "", markdown_logs(result.get("logs"))]))
    for n in notes:
        print(n, file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else md, end="\n" if args.json else "")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        from util import atomic_write
        atomic_write(os.path.join(args.out, "table.md"), lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
        atomic_write(os.path.join(args.out, "fit.json"), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        written = [os.path.join(args.out, n) for n in ("table.md", "fit.json")]
        if "datasets" in result:
            written += make_figures(result, args.out)
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="Relative scores, quadratic fit in w_p and critical PLW of a PLW sweep.")
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
    except (OSError, ValueError) as e:  # bad input: one line, no traceback
        print(f"analyze.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
