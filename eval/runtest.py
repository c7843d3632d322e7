"""
The test whose unit is the run. A run's benchmarks share its noise (a run that generalises better does so on several
benchmarks), so whether PLW matters is tested on one number per run, the paper's relative aggregate (scores.py:
the mean over a group's benchmarks of each one's min-max-scaled score), regressed on w_p = PLW^log10(2):

    y_r = model offset + b1 w_p + b2 w_p^2 + e_r          ordinary least squares, one row per run

- p_joint, does PLW matter at all (b1 = b2 = 0)? The F of the two terms; its null distribution from permuting the
  PLW labels among each model's runs, which is exact under that null (a model's runs are then exchangeable).
- p_quadratic, is the curve bent (b2 = 0, b1 free)? t^2 of b2; its null distribution from permuting, within each
  model, the residuals of the fit without w_p^2 (Freedman & Lane 1983; Anderson & Legendre 1999 found it the most
  reliable of the approximate permutation tests for one term of a regression). Two-sided: `concave` says b2 < 0.
- critical PLW: the vertex w* = -b1 / (2 b2) when b2 < 0, with Fieller's 95% set for it, the w where the t test of
  the slope at w, b1 + 2 b2 w = 0, does not reject. It is a bounded interval only when b2 is distinguishable from 0;
  otherwise the set is unbounded and is reported so (the delta method would print a finite interval there).
Parametric OLS p-values (F and t) are reported beside the permutation ones; a seed's run is its own unit (a run is a
condition and a seed). Definitions and the measured error rates: docs/analysis.md, tests/test_runtest.py.
"""
import math

import numpy as np

from eval.scores import plw_from_wp
from eval.stats import f_sf, t_quantile

N_PERM = 9999  # p down to 1e-4: resolves 1e-3 with ten permutations to spare below it
PERM_SEED = 0
TEST_KEYS = ("unit", "n_runs", "models", "method", "offsets", "b1", "b2", "se_b2", "df", "F_joint", "p_joint", "p_joint_ols",
             "t_quadratic", "p_quadratic", "p_quadratic_ols", "concave", "vertex_wp", "critical_plw", "ci_kind",
             "ci_wp", "ci_plw", "inside_grid", "ci_inside_grid", "grid_wp", "reason")


def design(models, w):
    """(n, m + 2) design: one offset column per model (no separate intercept), w_p, w_p^2"""
    names = sorted(set(models))
    cols = [np.array([m == name for m in models], dtype=np.float64) for name in names]
    return np.column_stack(cols + [w, w * w])


def residual_maker(X):
    """M = I - X (X'X)^+ X': y @ M are the least-squares residuals of y on X (M is symmetric)"""
    return np.eye(X.shape[0]) - X @ np.linalg.pinv(X)


def strata_permutations(strata, n_perm, rng):
    """(n_perm, n) index arrays, each permuting positions only among those of the same stratum (a model's runs)"""
    strata = np.asarray(strata)
    perms = np.tile(np.arange(len(strata)), (n_perm, 1))
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        perms[:, idx] = idx[np.argsort(rng.random((n_perm, len(idx))), axis=1)]
    return perms


def f_statistics(Y, M_full, M_reduced, q, df):
    """F of the q columns the reduced model lacks, for each row of Y (k, n)"""
    rss_full = ((Y @ M_full) ** 2).sum(-1)
    rss_reduced = ((Y @ M_reduced) ** 2).sum(-1)
    return (rss_reduced - rss_full) / q / np.maximum(rss_full / df, 1e-300)


def permutation_p(y, X, keep, perms):
    """(F, parametric p, permutation p) of the columns of X outside `keep`: Freedman-Lane, i.e. the reduced model's
    fitted values plus its residuals permuted by each row of perms. With only the model offsets kept, this is
    permuting y within models, exact under the null. p = (1 + #{F* >= F}) / (1 + number of permutations)."""
    n, p = X.shape
    q, df = p - len(keep), n - p
    M_full, M_reduced = residual_maker(X), residual_maker(X[:, keep])
    resid = y @ M_reduced
    F = float(f_statistics(y[None], M_full, M_reduced, q, df)[0])
    F_star = f_statistics((y - resid)[None] + resid[perms], M_full, M_reduced, q, df)         # (n_perm,)
    exceed = int((F_star >= F * (1 - 1e-9)).sum())  # ties (equal up to rounding) count against the effect
    return F, f_sf(F, q, df), (1 + exceed) / (1 + len(perms))


def fieller(b1, b2, V, t):
    """Fieller's set of the w where |b1 + 2 b2 w| <= t * se(b1 + 2 b2 w): ("bounded", lo, hi), ("two rays", lo, hi)
    (everything outside (lo, hi)) or ("whole line", None, None). V: the 2x2 covariance of (b1, b2)."""
    A = 4.0 * (b2 * b2 - t * t * V[1, 1])
    B = 4.0 * (b1 * b2 - t * t * V[0, 1])
    C = b1 * b1 - t * t * V[0, 0]
    disc = B * B - 4.0 * A * C
    if A > 0:  # b2 is distinguishable from 0 at this level: a finite interval around the vertex
        r = math.sqrt(max(disc, 0.0))
        return "bounded", (-B - r) / (2 * A), (-B + r) / (2 * A)
    if disc > 0 and A < 0:
        r = math.sqrt(disc)
        return "two rays", (-B + r) / (2 * A), (-B - r) / (2 * A)
    return "whole line", None, None


def vertex_summary(b1, b2, V, t, grid):
    """The critical PLW with its Fieller set, and whether they lie inside the grid [lo, hi] of w_p"""
    out = {"concave": b2 < 0, "vertex_wp": None, "critical_plw": None, "ci_kind": None, "ci_wp": None,
           "ci_plw": None, "inside_grid": None, "ci_inside_grid": None, "reason": None}
    if b2 >= 0:
        out["reason"] = f"not concave (b2 = {b2:+.3g} >= 0): the fitted curve has no maximum"
        return out
    v = -b1 / (2.0 * b2)
    kind, lo, hi = fieller(b1, b2, V, t)
    out.update(vertex_wp=v, ci_kind=kind, inside_grid=bool(grid[0] <= v <= grid[1]))
    if v < 0:
        out["reason"] = f"the vertex w_p = {v:.3g} is negative: no PLW has it (the best PLW is 0)"
    else:
        out["critical_plw"] = plw_from_wp(v)
    if kind == "bounded":
        out.update(ci_wp=[lo, hi], ci_plw=[plw_from_wp(max(lo, 0.0)), plw_from_wp(max(hi, 0.0))],
                   ci_inside_grid=bool(grid[0] <= lo and hi <= grid[1]))
    else:
        out["ci_inside_grid"] = False
        where = f"everything outside [{lo:.3g}, {hi:.3g}] in w_p" if kind == "two rays" else "the whole line"
        out["reason"] = out["reason"] or (f"b2 is not distinguishable from 0 at the 5% level: the vertex's 95% "
                                          f"Fieller set is unbounded ({where}), so the data do not locate a critical PLW")
    return out


def run_level_test(runs, n_perm=N_PERM, seed=PERM_SEED):
    """
    runs: [{"model", "plw", "relative"}], one per run (a condition and a seed). Returns a dict of TEST_KEYS: the OLS
    fit with models as offsets, p_joint and p_quadratic from permutations (n_perm, a fixed seed) with their
    parametric twins, and the critical PLW with its Fieller 95% set. Too few runs or PLW values: reason says why.
    """
    out = dict.fromkeys(TEST_KEYS)
    models = [r["model"] for r in runs]
    w = np.array([r["wp"] for r in runs], dtype=np.float64)
    y = np.array([r["relative"] for r in runs], dtype=np.float64)
    out.update(unit="run", n_runs=len(runs), models=len(set(models)),
               method=f"OLS of the per-run relative aggregate on model offsets + w_p + w_p^2; p_joint: PLW labels "
                      f"permuted among each model's runs (F of b1, b2); p_quadratic: Freedman-Lane permutation of "
                      f"the residuals without w_p^2 within each model (t^2 of b2, two-sided); {n_perm:,} "
                      f"permutations, seed {seed}; critical PLW: Fieller 95% set")
    X = design(models, w)
    n, p = X.shape
    if len(np.unique(w)) < 3 or n - p < 2 or np.linalg.matrix_rank(X) < p:
        out["reason"] = (f"{n} runs at {len(np.unique(w))} PLW values for {p} parameters: a run-level quadratic needs "
                         f"3 PLW values and 2 runs more than parameters")
        return out
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    df, m = n - p, p - 2
    s2 = float(((y - X @ beta) ** 2).sum()) / df
    if s2 <= 1e-24 * max(float(np.var(y)), 1e-300):
        out["reason"] = "the quadratic fits the runs exactly: no residual variance to test against"
        return out
    V = s2 * np.linalg.inv(X.T @ X)[m:, m:]                                              # cov of (b1, b2)
    b1, b2 = float(beta[m]), float(beta[m + 1])
    perms = strata_permutations(models, n_perm, np.random.default_rng(seed))
    F, p_ols, p_perm = permutation_p(y, X, list(range(m)), perms)
    _, p2_ols, p2_perm = permutation_p(y, X, list(range(m + 1)), perms)
    out.update(offsets=dict(zip(sorted(set(models)), map(float, beta[:m]))), b1=b1, b2=b2, se_b2=math.sqrt(V[1, 1]),
               df=df, F_joint=F, p_joint=p_perm, p_joint_ols=p_ols, t_quadratic=b2 / math.sqrt(V[1, 1]),
               p_quadratic=p2_perm, p_quadratic_ols=p2_ols, grid_wp=[float(w.min()), float(w.max())])
    out.update(vertex_summary(b1, b2, V, t_quantile(0.975, df), out["grid_wp"]))
    return out
