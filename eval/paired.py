"""
Paired comparisons of a PLW study: every condition against the plain run at a baseline PLW with the same seed, with
two intervals and a multiplicity correction. Definitions: docs/analysis.md ("Paired differences over seeds").

- seed-only: mean of the paired differences over seeds +- t(0.975, n-1) sd / sqrt(n); it covers what a seed varies
  (the data order, and in a study whose seeds draw the training records, those records too).
- two-level: the same mean, with the standard error of a bootstrap over the evaluation's records added in
  quadrature, where the records are the same for every seed (a held-out set, a forgetting set, a multiple-choice
  task): mean +- t(0.975, n-1) sqrt(sd^2 / n + se_records^2). A measure on each seed's own records (train NLL) has
  that variance in its seeds already and gets none added.
- Holm's step-down correction within each family of comparisons (family_of), at 5%: `survives`.
"""
import json
import math
import zlib

import numpy as np

from eval.scores import GROUPS, normalize_rows
from eval.stats import t975, t_sf2

N_BOOT = 2000  # record resamples: the SE of a standard error from 2,000 resamples is about 1.6%
BOOT_SEED = 0


def condition_label(e):
    """'PLW 0.05', or 'PLW 0 + dropout 0.1' for a variant"""
    return f"PLW {e['plw']:g}" + ("" if e["regularizer"] == "none" else f" + {e['regularizer']} {e['reg_value']:g}")


def as_condition(baseline):
    """(regularizer, reg_value, PLW) of a baseline given as a plain PLW (a number) or as such a tuple"""
    return baseline if isinstance(baseline, tuple) else ("none", 0.0, float(baseline))


def parse_condition(text):
    """A baseline from the command line: a PLW ("0.05": the plain run) or a control at PLW 0 ("domain=0")"""
    name, eq, value = str(text).partition("=")
    try:
        return (name, float(value), 0.0) if eq else ("none", 0.0, float(name))
    except ValueError:
        raise ValueError(f"a baseline is a PLW (0.05) or a control at PLW 0 (name=value), got {text!r}") from None


def paired_differences(rows, baseline=0.0):
    """
    For each condition (plain PLW runs, then regularizer and control variants) and benchmark, the score minus the
    same seed's score of the baseline condition (a plain PLW, or a (regularizer, value, PLW) tuple; same dataset,
    model, benchmark), with the seed-only 95% t interval and its p-value (no interval for one seed). Returns
    [{"dataset", "model", "benchmark", "group", "higher_is_better", "plw", "regularizer", "reg_value", "baseline"
    (its PLW), "base" (its condition), "seeds", "seed_list", "mean", "sd", "base_mean", "diff", "diff_sd", "ci",
    "p_seed", "excludes_zero"}], the baseline's own rows first (diff 0, no interval); conditions without the
    baseline are left out.
    """
    baseline = as_condition(baseline)
    cells = {}
    for r in normalize_rows(rows):
        key = (r["dataset"], r["model"], r["benchmark"])
        cells.setdefault(key, {}).setdefault((r["regularizer"], r["reg_value"], r["plw"]), {})[r["seed"]] = r
    out = []
    for (d, m, b), by_cond in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], GROUPS.index(
            next(iter(next(iter(kv[1].values())).values()))["group"]), kv[0][2])):
        base = by_cond.get(baseline)
        if base is None:
            continue
        for cond in sorted(by_cond, key=lambda k: (k[0] != "none", k)):
            seeds = sorted(set(by_cond[cond]) & set(base))
            if seeds:
                out.append(difference(d, m, b, cond, by_cond[cond], base, seeds, baseline))
    return out


def difference(d, m, b, cond, runs, base, seeds, baseline):
    """one entry of paired_differences"""
    x = np.array([runs[s]["score"] for s in seeds])
    x0 = np.array([base[s]["score"] for s in seeds])
    diff, n = x - x0, len(seeds)
    sd = float(diff.std(ddof=1)) if n > 1 else None
    ci, p = None, None
    if n > 1 and cond != baseline:
        half = t975(n - 1) * sd / math.sqrt(n)
        ci = [float(diff.mean() - half), float(diff.mean() + half)]
        p = t_sf2(float(diff.mean()) / (sd / math.sqrt(n)), n - 1) if sd > 0 else float(diff.mean() == 0)
    first = runs[seeds[0]]
    return {"dataset": d, "model": m, "benchmark": b, "group": first["group"],
            "higher_is_better": first["higher_is_better"], "plw": cond[2], "regularizer": cond[0],
            "reg_value": cond[1], "baseline": baseline[2], "base": list(baseline), "seeds": n, "seed_list": seeds,
            "mean": float(x.mean()),
            "sd": float(x.std(ddof=1)) if n > 1 else None, "base_mean": float(x0.mean()), "diff": float(diff.mean()),
            "diff_sd": sd, "ci": ci, "p_seed": p, "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}


# -----------------------------------------------------------------------------
# the two-level interval: seeds, plus a bootstrap over the evaluation's records

def load_records(path):
    """records.jsonl (sweep.py): {(dataset, model, regularizer, reg_value, plw, seed, benchmark): (record set,
    num (n,), den (n,))}; a measure is sum num / sum den over its records"""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                key = (r["dataset"], r.get("model") or "", r.get("regularizer") or "none", float(r.get("reg_value") or 0),
                       float(r["plw"]), r.get("seed") or 0, r["benchmark"])
                out[key] = (r["records"], np.asarray(r["num"], dtype=np.float64), np.asarray(r["den"], dtype=np.float64))
    return out


def resamples(name, n, n_boot=N_BOOT, seed=BOOT_SEED):
    """(n_boot, n) record indices drawn with replacement; the same draws for every run that shares record set `name`
    (so a difference between two runs resamples the same records on both sides)"""
    return np.random.default_rng([seed, zlib.crc32(name.encode())]).integers(0, n, (n_boot, n))


def records_se(e, records, n_boot=N_BOOT):
    """The bootstrap SE over records of entry e's mean difference, or None: when a run lacks records, or when the
    record set is not the same for every seed (then the seeds' spread already holds it)"""
    keys = [((e["dataset"], e["model"], e["regularizer"], e["reg_value"], e["plw"], s, e["benchmark"]),
             (e["dataset"], e["model"], *e["base"], s, e["benchmark"])) for s in e["seed_list"]]
    if not all(k in records for pair in keys for k in pair):
        return None
    sets = {records[k][0] for pair in keys for k in pair}
    if len(sets) != 1:
        return None
    name = sets.pop()
    idx = resamples(name, len(records[keys[0][0]][1]), n_boot)
    stat = lambda k: records[k][1][idx].sum(1) / records[k][2][idx].sum(1)  # noqa: E731  (n_boot,)
    diffs = np.mean([stat(k) - stat(k0) for k, k0 in keys], axis=0)
    return float(diffs.std(ddof=1))


def add_two_level(entries, records):
    """Add to each compared entry se_records, ci2 and p2 (two-level; equal to the seed-only ones when no record
    set applies)"""
    for e in entries:
        if e["ci"] is None:
            continue
        se_rec = records_se(e, records) if records else None
        se = math.sqrt((e["diff_sd"] ** 2) / e["seeds"] + (se_rec or 0.0) ** 2)
        half = t975(e["seeds"] - 1) * se
        e.update(se_records=se_rec, ci2=[e["diff"] - half, e["diff"] + half],
                 p2=t_sf2(e["diff"] / se, e["seeds"] - 1) if se > 0 else float(e["diff"] == 0))
    return entries


# -----------------------------------------------------------------------------
# multiplicity

def holm(p):
    """Holm's step-down adjusted p-values (same order as p)"""
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1.0)
    return out


def family_of(e, primary, control_ref):
    """'primary' (the primary measure, a plain PLW against PLW 0), 'controls' (the primary measure, a control against
    PLW 0 or against the reference condition), or 'secondary' (every other comparison)"""
    plain0 = tuple(e["base"]) == ("none", 0.0, 0.0)
    if e["benchmark"] == primary:
        if e["regularizer"] == "none" and plain0:
            return "primary"
        if e["regularizer"] != "none" and (plain0 or control_ref is not None
                                           and tuple(e["base"]) == as_condition(control_ref)):
            return "controls"
    return "secondary"


def correct(entries, primary=None, control_ref=None, alpha=0.05):
    """Holm within each family, on the two-level p-value (the seed-only one where there is none): adds family,
    p_holm and survives"""
    fams = {}
    for e in entries:
        if e["ci"] is not None:
            fams.setdefault(family_of(e, primary, control_ref), []).append(e)
    for fam, es in fams.items():
        for e, q in zip(es, holm([e.get("p2", e["p_seed"]) for e in es])):
            e.update(family=fam, family_size=len(es), p_holm=float(q), survives=bool(q < alpha))
    return entries
