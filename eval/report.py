"""
What analyze.py prints and draws: Markdown tables (per dataset, the paired differences, the loss RSD) and PNG
figures. Pure functions of analyze()'s result; matplotlib is optional and imported only to draw.
"""
import os
import re
import sys

import numpy as np

from eval.betareg import Z95
from eval.paired import as_condition, condition_label
from eval.scores import DEFAULT_DATASET, PAPER_GROUPS, wp
from eval.stats import LOG_KEYS
from util import atomic_write

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


def format_test(t, what):
    """One line: the run-level test (runtest.py) of a view, naming its test, and the critical PLW with its set."""
    if t.get("same_as"):
        return f"{what}: the same runs as {VIEW_NAMES[t['same_as']]}"
    if t["b2"] is None:
        return f"{what}: no test ({t['reason']})"
    s = (f"{what} ({t['n_runs']} runs, {_count(t['models'], 'model')}): b1 = {t['b1']:.3g}, b2 = {t['b2']:.3g} "
         f"(SE {t['se_b2']:.2g}); does PLW matter: p_joint = {t['p_joint']:.3g} (permutation; F-test "
         f"{t['p_joint_ols']:.3g}); concave: p_quadratic = {t['p_quadratic']:.3g} (Freedman-Lane permutation; "
         f"t-test {t['p_quadratic_ols']:.3g})")
    significant = t["p_quadratic"] < 0.05 and t["concave"]
    if t["critical_plw"] is not None and not t["inside_grid"]:
        return s + (f"; no critical PLW inside the grid (the fitted vertex w_p = {t['vertex_wp']:.3g} lies outside "
                    f"[{t['grid_wp'][0]:.3g}, {t['grid_wp'][1]:.3g}]: the curve rises or falls across the whole grid)")
    if t["critical_plw"] is None or t["ci_kind"] != "bounded":
        crit = "" if t["critical_plw"] is None else f"critical PLW {t['critical_plw']:.3g} (untested); "
        return s + f"; {crit}no interval ({t['reason']})"
    lo, hi = t["ci_plw"]
    crit = f"critical PLW = {t['critical_plw']:.3g}, 95% Fieller [{lo:.3g}, {hi:.3g}]"
    where = "inside" if t["ci_inside_grid"] else "not wholly inside"
    return s + f"; {f'**{crit}**' if significant else crit + ' (untested: b2 not significant)'}, {where} the grid"


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
    lines = ["Regularizers and controls vs PLW (the paper's Fig. 8; relative aggregate over all benchmarks):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * (1 + multi) + "---:|" * (len(header) - 1 - multi)]
    for r in regs:
        cells = ([r["model"]] if multi else []) + [r["label"], f"{r['plw']:g}", _fmt(r["relative"], ".3f"),
                                                   _fmt(r["sd"], ".3f"), str(r["seeds"])]
        cells += [_fmt(r[g], ".3f") for g in groups] + [_fmt(r["delta"], "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown_condition_table(res):
    """The per-condition table of one dataset and the notes under it"""
    benches = list(res["benchmarks"])
    views = list(res["fit_by_group"])
    simple = [g for g in PAPER_GROUPS if g in views]
    multi = len({e["model"] for e in res["table"]}) > 1
    names = [b + ("" if res["benchmarks"][b]["higher_is_better"] else " ↓") for b in benches]
    header = ((["model"] if multi else []) + ["PLW", "w_p"] + names + ["rel. aggregate", "± sd", "seeds"]
              + [f"rel. {g}" for g in views] + [f"simple {g}" for g in simple])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * multi + "---:|" * (len(header) - multi)]
    for e in res["table"]:
        cells = (([e["model"]] if multi else []) + [f"{e['plw']:g}", f"{e['wp']:.3f}"]
                 + [_fmt(e["scores"].get(b)) for b in benches]
                 + [_fmt(e["relative"], ".3f"), _fmt(e["sd"], ".3f"), str(e["seeds"])]
                 + [_fmt(e[g], ".3f") for g in views] + [_fmt(e["simple"][g]) for g in simple])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "rel.: each benchmark min-max scaled over all runs of the dataset, then averaged; ± sd: over "
                  "seeds (- for one seed); simple: mean raw score. Group I = mc + short_gen, II = long_gen.  "]
    if any(not res["benchmarks"][b]["higher_is_better"] for b in benches):
        lines.append("↓ lower is better (inverted in the relative scores).  ")
    if res["excluded"]:
        lines.append(f"Same score in every run, left out of the aggregates: {', '.join(res['excluded'])}.  ")
    if len({e["n"] for e in res["table"]}) > 1:
        lines.append("Not every benchmark has a score at every PLW: each aggregate averages the ones present.  ")
    mech = [b for b in benches if res["benchmarks"][b]["group"] == "mechanism"]
    if mech:
        lines.append(f"Mechanism metrics (not aggregated): {', '.join(mech)}.  ")
    return lines


def markdown_tests(res):
    """The run-level test (primary), the paper's beta regression (labelled, with its caveat), the quick view"""
    lines = ["", "Test (the unit is the run: y = a run's relative aggregate, OLS on model offsets + b1·w_p + b2·w_p²; "
                 "p-values from permutations of PLW among each model's runs, runtest.py):"]
    lines += [f"- {format_test(t, VIEW_NAMES.get(g, g))}" for g, t in res["test"].items()]
    lines += ["", "The paper's model (fixed-effects beta regression, logit(mu) = benchmark + b1·w_p + b2·w_p², Wald "
                  "test of b2). Caveat: it counts each benchmark score of a run as an independent observation, so its "
                  "p-values are too small when a run's benchmarks share its noise; read the test above:"]
    lines += [f"- {format_beta(b, VIEW_NAMES.get(g, g))}" for g, b in res["beta"].items()]
    lines += ["", "Fit (least squares through the condition means, a quick view): " + format_fit(res["fit"])]
    lines += [f"- {format_fit(f, 'rel. ' + g)}" for g, f in res["fit_by_group"].items()]
    return lines + [""]


def markdown_table(result):
    """Markdown for analyze()'s result: per dataset, one row per plain-PLW condition with raw scores and the
    aggregates, the run-level tests, the paper's beta regressions, the fits and the regularizer comparison."""
    lines = []
    datasets = result["datasets"]
    for d, res in datasets.items():
        if len(datasets) > 1 or d != DEFAULT_DATASET:
            lines += [f"### {d}", ""]
        lines += markdown_condition_table(res) + markdown_tests(res)
        if res["regularizers"]:
            lines += markdown_regularizers(res["regularizers"])
    return "\n".join(lines)


def _cell_ci(e, key):
    """'+0.012 [+0.003, +0.021]' with † when it survives Holm in its family (two-level cells), * when it excludes 0"""
    ci = e.get(key)
    if ci is None:
        return f"{e['diff']:+.3g}"
    mark = ("†" if e.get("survives") else "") if key == "ci2" else ("*" if ci[0] > 0 or ci[1] < 0 else "")
    return f"{e['diff']:+.3g} [{ci[0]:+.3g}, {ci[1]:+.3g}]{mark}"


def _paired_table(ps, plws, benches, key, get):
    rows = ["| measure | " + " | ".join(f"PLW {p:g}" for p in plws) + " |", "|---|" + "---:|" * len(plws)]
    for b in benches:
        rows.append(f"| {b} | " + " | ".join("-" if (b, p) not in get else _cell_ci(get[b, p], key) for p in plws)
                    + " |")
    return rows


def markdown_paired(paired, baseline=0.0):
    """Per dataset (and model): the raw mean ± sd over seeds per plain PLW; the paired difference against PLW
    `baseline` with its seed-only 95% t interval; and with the two-level interval and Holm's correction."""
    plain = [p for p in paired or [] if p["regularizer"] == "none"]
    if not plain:
        return ""
    lines = []
    for d, m in sorted({(p["dataset"], p["model"]) for p in plain}):
        ps = [p for p in plain if (p["dataset"], p["model"]) == (d, m)]
        plws = sorted({p["plw"] for p in ps})
        benches = list(dict.fromkeys(p["benchmark"] for p in ps))
        get = {(p["benchmark"], p["plw"]): p for p in ps}
        seeds = sorted({p["seeds"] for p in ps})
        lines += [f"### {d}" + (f" ({m})" if m else "") + f": paired differences vs PLW {baseline:g}", "",
                  f"Mean ± sd over seeds ({'/'.join(map(str, seeds))} seeds per PLW; ↓ lower is better):", "",
                  "| measure | " + " | ".join(f"PLW {p:g}" for p in plws) + " |", "|---|" + "---:|" * len(plws)]
        for b in benches:
            cells = ["-" if (b, p) not in get else f"{get[b, p]['mean']:.4g}"
                     + (f" ± {get[b, p]['sd']:.2g}" if get[b, p]["sd"] is not None else "") for p in plws]
            arrow = "" if next(get[b, p] for p in plws if (b, p) in get)["higher_is_better"] else " ↓"
            lines.append(f"| {b}{arrow} | " + " | ".join(cells) + " |")
        others = [p for p in plws if p != baseline]
        lines += ["", f"Difference from PLW {baseline:g} with the same seed, mean [95% CI], seed-only (t over seeds, "
                      f"n − 1 df; * excludes zero):", ""] + _paired_table(ps, others, benches, "ci", get)
        if any(p.get("ci2") for p in ps):
            lines += ["", "The same, two-level 95% CI (seeds, plus a bootstrap over the evaluation's records where "
                          "every seed shares them; † survives Holm's correction at 5% in its family):", ""]
            lines += _paired_table(ps, others, benches, "ci2", get)
            lines += ["", "Families: " + "; ".join(sorted({f"{p['family']} ({p['family_size']} comparisons)"
                                                           for p in ps if p.get("family")}))]
        lines.append("")
    return "\n".join(lines)


def control_verdict(c0, cref, ref, ref_label):
    """Does the control reproduce the reference's gain over PLW 0? (the rule of docs/analysis.md)"""
    if c0 is None or cref is None or ref is None or not c0.get("family"):
        return "-"
    better = (lambda e: e["diff"] > 0) if c0["higher_is_better"] else (lambda e: e["diff"] < 0)  # noqa: E731
    if not (c0["survives"] and better(c0)):
        return "no gain over PLW 0"
    if not cref["survives"]:
        return f"a gain; not distinguishable from {ref_label}'s"
    return f"a gain, {'larger' if better(cref) else 'smaller'} than {ref_label}'s"


def markdown_controls(paired, paired_ref, primary, control_ref):
    """The controls table: each control's primary measure against PLW 0 and against the reference condition
    control_ref (a PLW, or a control at PLW 0; two-level intervals, Holm in the controls family), with the verdict
    of control_verdict"""
    controls = [e for e in paired or [] if e["regularizer"] != "none" and e["benchmark"] == primary]
    if not controls or control_ref is None:
        return ""
    reg, value, plw = as_condition(control_ref)
    ref = next((e for e in paired if (e["regularizer"], e["reg_value"], e["plw"]) == (reg, value, plw)
                and e["benchmark"] == primary), None)
    label = condition_label({"plw": plw, "regularizer": reg, "reg_value": value})
    vs_ref = {(e["regularizer"], e["reg_value"], e["plw"]): e for e in paired_ref or []}
    lines = [f"Controls on {primary} (mean ± sd over seeds; Δ = difference with the same seed, two-level 95% CI, "
             f"Holm p within the controls family):", "",
             f"| condition | {primary} | Δ vs PLW 0 | p (Holm) | Δ vs {label} | p (Holm) | verdict |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for e in ([ref] if ref else []) + [e for e in controls if e is not ref]:
        r = vs_ref.get((e["regularizer"], e["reg_value"], e["plw"]))
        lines.append(f"| {condition_label(e)} | {e['mean']:.4g} ± {e['sd']:.2g} | {_cell_ci(e, 'ci2')} | "
                     f"{_fmt(e.get('p_holm'), '.2g')} | {_cell_ci(r, 'ci2') if r else '-'} | "
                     f"{_fmt(r.get('p_holm') if r else None, '.2g')} | "
                     f"{'the reference' if e is ref else control_verdict(e, r, ref, label)} |")
    return "\n".join(lines + [""])


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


