"""
The PNG figures of analyze.py: the run-level fit, the mechanism metrics, the regularizer and control comparisons, and
the paired differences against PLW 0. Pure functions of analyze()'s result; matplotlib is imported only to draw (no
pyplot: no global backend or figure state). Text is 9 pt or larger; a measure with the same value in every run has
no panel; a fit is drawn with its p-value, dashed and marked untested when it is not significant.
"""
import os
import re
import sys

import numpy as np

from eval.paired import condition_label
from eval.scores import wp
from util import atomic_write

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


def fit_figure(Figure, title, res):
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
    fig.suptitle(f"{title}: relative aggregate over all benchmarks vs PLW", fontsize=11)
    return fig


def mechanism_figure(Figure, title, res, mech):
    """each mechanism metric vs PLW, one line per base model (metrics with one value throughout are left out)"""
    table = res["table"]
    mech = [b for b in mech if len({e["scores"][b] for e in table if b in e["scores"]}) > 1]
    cols = min(4, max(1, len(mech)))  # a grid, so that many metrics stay readable
    rows = -(-len(mech) // cols)
    fig = Figure(figsize=(3.8 * cols, 3.4 * rows), layout="constrained")
    for i, name in enumerate(mech):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, m in enumerate(sorted({e["model"] for e in table})):
            pts = [(e["wp"], e["scores"][name]) for e in table if e["model"] == m and name in e["scores"]]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{j + 2}", ms=4, label=m or None)
        ax.set_ylabel(name, fontsize=9)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        _plw_axis(ax, table)
    fig.suptitle(f"{title}: mechanism metrics vs PLW (seed means)", fontsize=11)
    return fig


def regularizer_figure(Figure, title, regs):
    """the paper's Fig. 8: each regularizer variant's relative aggregate beside plain PLW 0, 1 and the best PLW"""
    fig = Figure(figsize=(6.4, 0.9 + 0.32 * len(regs)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(regs))[::-1]
    labels = [(f"{r['model']}: " if r["model"] else "") + r["label"] + ("" if r["label"].startswith(("PLW", "best"))
                                                                         else f" @ PLW {r['plw']:g}") for r in regs]
    ax.barh(y, [r["relative"] for r in regs], xerr=[r["sd"] or 0 for r in regs],
            color=["gray" if r["regularizer"] == "none" else "tab:blue" for r in regs])
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlabel("relative aggregate (± sd over seeds)")
    ax.grid(alpha=0.3, axis="x")
    ax.tick_params(labelsize=9)
    fig.suptitle(f"{title}: regularizers and controls vs PLW", fontsize=11)
    return fig


def _zoom(ax, values, errs, x, labels):
    """Set the y-range to the points other than one far outlier (more than 3 times the others' span away), and mark
    the outlier at the edge with its value: a large effect at PLW 1 must not flatten the small-PLW ones."""
    v = np.asarray(values)
    if len(v) < 3:
        return
    far = int(np.argmax(np.abs(v)))
    rest = np.delete(np.c_[v - errs[0], v + errs[1]], far, axis=0)
    lo, hi = min(rest.min(), 0.0), max(rest.max(), 0.0)
    span = hi - lo
    if span <= 0 or abs(v[far]) < 3 * max(abs(lo), abs(hi)):
        return
    pad = 0.15 * span
    ax.set_ylim(lo - pad, hi + pad)
    y = hi + pad * 0.6 if v[far] > 0 else lo - pad * 0.6
    ax.annotate(f"PLW {labels[far]}: {v[far]:+.3g}\n(off scale)", (x[far], y), ha="center",
                va="top" if v[far] > 0 else "bottom", fontsize=9, color="C3")


def paired_figures(Figure, title, paired, measures=None, zoom=()):
    """(metrics figure, differences figure) of one dataset's plain PLW runs: each measure vs PLW (mean ± sd over
    seeds), and its difference from PLW 0 with the two-level 95% interval (thin) and the seed-only one (thick); the
    panels of `zoom` are zoomed past a far outlier. `measures` picks and orders the panels (default: all). Measures
    whose runs all agree with PLW 0 exactly (no difference anywhere) are left out."""
    plain = [p for p in paired if p["regularizer"] == "none"]
    benches = [b for b in (measures or dict.fromkeys(p["benchmark"] for p in plain))
               if any(p["diff"] != 0 or p["diff_sd"] for p in plain if p["benchmark"] == b)]
    cols = min(4, max(1, len(benches)))
    rows = -(-len(benches) // cols)
    plws = sorted({p["plw"] for p in plain})
    figs = []
    for kind in ("metrics", "paired"):
        fig = Figure(figsize=(3.9 * cols, 3.3 * rows), layout="constrained")
        for i, b in enumerate(benches):
            ax = fig.add_subplot(rows, cols, i + 1)
            ps = sorted((p for p in plain if p["benchmark"] == b), key=lambda p: p["plw"])
            x = [wp(p["plw"]) for p in ps]
            if kind == "metrics":
                lo = [p["mean"] - (p["sd"] or 0) for p in ps]
                hi = [p["mean"] + (p["sd"] or 0) for p in ps]
                ax.fill_between(x, lo, hi, color="C0", alpha=0.2, lw=0)
                ax.plot(x, [p["mean"] for p in ps], "o-", color="C0", ms=4)
            else:
                paired_panel(ax, ps, x, b in zoom)
            ax.set_title(b + ("" if ps[0]["higher_is_better"] else " (lower is better)")
                         + (" − PLW 0" if kind == "paired" else ""), fontsize=10)
            ax.grid(alpha=0.3)
            ax.set_xticks([wp(p) for p in plws])
            ax.set_xticklabels([f"{p:g}" for p in plws], fontsize=9, rotation=90)
            ax.tick_params(axis="y", labelsize=9)
            ax.set_xlabel("PLW (at w_p = PLW^log10(2) spacing)", fontsize=9)
        fig.suptitle(f"{title}: " + ("mean ± sd over seeds vs PLW" if kind == "metrics" else
                     "difference from PLW 0 (same seed): two-level 95% CI (thin), seed-only (thick), "
                     "× survives Holm"), fontsize=11)
        figs.append(fig)
    return figs


def paired_panel(ax, ps, x, zoom=False):
    """one measure's differences from PLW 0 with both intervals; × marks a difference that survives Holm"""
    d = np.array([p["diff"] for p in ps])
    two = np.array([[p["diff"] - p["ci2"][0], p["ci2"][1] - p["diff"]] if p.get("ci2") else
                    ([p["diff"] - p["ci"][0], p["ci"][1] - p["diff"]] if p["ci"] else [0, 0]) for p in ps]).T
    one = np.array([[p["diff"] - p["ci"][0], p["ci"][1] - p["diff"]] if p["ci"] else [0, 0] for p in ps]).T
    ax.errorbar(x, d, yerr=two, fmt="none", ecolor="C0", elinewidth=1, capsize=3)
    ax.errorbar(x, d, yerr=one, fmt="o", color="C0", ms=4, elinewidth=3)
    ax.axhline(0, color="gray", lw=0.8)
    surv = [(xi, di) for xi, di, p in zip(x, d, ps) if p.get("survives")]
    if surv:
        ax.plot(*zip(*surv), "x", color="C3", ms=8, mew=2)
    if zoom:
        _zoom(ax, d, two, x, [f"{p['plw']:g}" for p in ps])


def controls_figure(Figure, title, paired, primary, control_ref):
    """each control's difference from PLW 0 on the primary measure beside the reference's (control_ref: a
    (regularizer, value, PLW) condition), two-level 95% CI"""
    es = [e for e in paired if e["benchmark"] == primary and e.get("ci2") and
          (e["regularizer"] != "none" or (e["regularizer"], e["reg_value"], e["plw"]) == tuple(control_ref))]
    es = sorted(es, key=lambda e: (e["regularizer"] != "none", e["regularizer"]))
    fig = Figure(figsize=(7.0, 1.2 + 0.42 * len(es)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(es))[::-1]
    for yi, e in zip(y, es):  # the reference PLW in red, the controls in blue
        ax.errorbar([e["diff"]], [yi], xerr=[[e["diff"] - e["ci2"][0]], [e["ci2"][1] - e["diff"]]], fmt="o",
                    capsize=3, color="C3" if e["regularizer"] == "none" else "C0")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([condition_label(e) + ("  (survives Holm)" if e.get("survives") else "") for e in es],
                       fontsize=9)
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel(f"{primary}: difference from PLW 0 (same seed), two-level 95% CI"
                  + ("" if es and es[0]["higher_is_better"] else "; lower is better"), fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ref = condition_label({"plw": control_ref[2], "regularizer": control_ref[0], "reg_value": control_ref[1]})
    fig.suptitle(f"{title}: which control at PLW 0 reproduces {ref}'s difference?", fontsize=11)
    return fig


def make_figures(result, out_dir, title=None, primary=None, control_ref=None, measures=None):
    """
    PNGs per dataset: fit_<dataset>.png (the run-level fit of the relative aggregate vs w_p), mechanism_<dataset>.png
    when there are mechanism rows, regularizers_<dataset>.png when there are regularizer or control runs (the paper's
    Fig. 8), metrics_ and paired_<dataset>.png with several seeds, controls_<dataset>.png with controls and a primary
    measure. `title` names the study in the figures (default: the dataset); `measures` picks the paired figures'
    panels; the primary measure's difference panel is zoomed past a far outlier. Returns the paths written, or []
    with a one-line note on stderr when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to leak
    except ImportError:
        print("note: matplotlib is not installed, no figures (pip install matplotlib)", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for d, res in result["datasets"].items():
        name = title or d
        mech = [b for b, m in res["benchmarks"].items() if m["group"] == "mechanism"]
        figs = [(f"fit_{_slug(d)}.png", fit_figure(Figure, name, res))]
        figs += [(f"mechanism_{_slug(d)}.png", mechanism_figure(Figure, name, res, mech))] if mech else []
        figs += [(f"regularizers_{_slug(d)}.png", regularizer_figure(Figure, name, res["regularizers"]))
                 ] if res["regularizers"] else []
        paired = [p for p in result.get("paired") or [] if p["dataset"] == d]
        if paired and any(p["ci"] for p in paired):
            mfig, pfig = paired_figures(Figure, name, paired, measures, zoom=(primary,) if primary else ())
            figs += [(f"metrics_{_slug(d)}.png", mfig), (f"paired_{_slug(d)}.png", pfig)]
        if primary and control_ref and any(p["regularizer"] != "none" and p["benchmark"] == primary and p.get("ci2")
                                           for p in paired):
            figs += [(f"controls_{_slug(d)}.png", controls_figure(Figure, name, paired, primary, control_ref))]
        for fname, fig in figs:
            path = os.path.join(out_dir, fname)
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
            written.append(path)
    return written
