"""
What analyze.py prints and draws: Markdown tables (per dataset, the paired differences, the loss RSD) and PNG
figures. Pure functions of analyze()'s result; matplotlib is optional and imported only to draw.
"""
import os
import re
import sys

import numpy as np

from eval.betareg import Z95
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
    lines = ["Regularizers vs PLW (the paper's Fig. 8; relative aggregate over all benchmarks):", "",
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
    top.set_xticklabels([f"{p:g}" for p in plws], fontsize=9, rotation=90)
    top.set_xlabel("PLW")
    ax.set_xlabel("w_p = PLW^log10(2)")


def fit_figure(Figure, d, res):
    """Each run's relative aggregate vs w_p, the condition means, and the run-level fit drawn with its p-value:
    solid with its critical PLW and Fieller interval when b2 < 0 is significant, dashed and marked untested if not"""
    table, t = res["table"], res["test"]["all"]
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")  # constrained: room for the twin PLW axis
    ax = fig.add_subplot()
    for j, m in enumerate(sorted({e["model"] for e in table})):
        pts = [(e["wp"], e["relative"]) for e in table if e["model"] == m and e["relative"] is not None]
        ax.plot(*zip(*pts), "o", color=f"C{j}", ms=5, label=f"{m + ': ' if m else ''}mean over seeds")
        if t["b2"] is not None:
            xs = np.linspace(*t["grid_wp"], 201)
            significant = t["p_quadratic"] < 0.05 and t["concave"]
            ax.plot(xs, t["offsets"][m] + t["b1"] * xs + t["b2"] * xs ** 2, "-" if significant else "--",
                    color=f"C{j}", lw=1.5, label=f"run-level fit, p_quadratic = {t['p_quadratic']:.2g}"
                    + ("" if significant else " (not significant: untested)") if j == 0 else None)
    if t["b2"] is not None and t["p_quadratic"] < 0.05 and t["concave"] and t["ci_kind"] == "bounded":
        ax.axvline(t["vertex_wp"], ls=":", color="gray", lw=1, label=f"critical PLW = {t['critical_plw']:.3g}")
        ax.axvspan(*t["ci_wp"], color="gray", alpha=0.12, label="95% Fieller interval")
    ax.set_ylabel("relative aggregate (min-max per benchmark, averaged)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    _plw_axis(ax, table)
    fig.suptitle(f"{d}: relative aggregate over all benchmarks vs PLW", fontsize=11)
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

