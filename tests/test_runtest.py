"""
eval/runtest.py, the test whose unit is the run: its pieces against references (t and F tails against scipy, the OLS
F-test against statsmodels, Fieller's set against its definition, random permutations against full enumeration),
and its error rates on simulated studies of the paper's design, beside those of the paper's beta regression.
"""
import itertools
import math

import numpy as np
import pytest

from eval.analyze import analyze
from eval.runtest import design, fieller, permutation_p, run_level_test, strata_permutations, vertex_summary
from eval.scores import PAPER_PLWS, wp
from eval.stats import betainc, f_sf, t_quantile, t_sf2

# the paper's 13 benchmarks: Group I = 4 multiple choice + 7 short generation, Group II = 2 long generation
BENCHMARKS = ([(b, "mc") for b in ("arc_challenge", "piqa", "truthfulqa_mc2", "winogrande")]
              + [(b, "short_gen") for b in ("truthfulqa_gen", "wmt14-en-fr", "wmt14-fr-en", "wmt16-en-de",
                                            "wmt16-de-en", "wmt16-en-ro", "wmt16-ro-en")]
              + [(b, "long_gen") for b in ("alpaca_eval", "pandalm")])


def test_t_and_f_tails_equal_scipy():
    special, stats = pytest.importorskip("scipy.special"), pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for a, b, x in zip(rng.uniform(0.05, 50, 300), rng.uniform(0.05, 50, 300), rng.uniform(0, 1, 300)):
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)
    for df in (1, 2, 5, 16, 40, 300):
        for t in (0.0, 0.3, 1.0, 2.1, 4.0, 9.0):
            assert t_sf2(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-12)
        for f in (0.0, 0.5, 1.0, 3.0, 12.0):
            assert f_sf(f, 2, df) == pytest.approx(stats.f.sf(f, 2, df), abs=1e-12)
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)


def test_f_test_equals_statsmodels_ols():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    models = ["a"] * 10 + ["b"] * 10
    w = np.tile(wp(np.array(PAPER_PLWS)), 2)
    y = 0.4 + 0.1 * w - 0.2 * w * w + (np.array(models) == "b") * 0.05 + rng.normal(0, 0.05, 20)
    X = design(models, w)
    perms = strata_permutations(models, 99, rng)
    full = sm.OLS(y, X).fit()
    for keep, names in (([0, 1], "x3 = 0, x4 = 0"), ([0, 1, 2], "x4 = 0")):
        F, p_ols, _ = permutation_p(y, X, keep, perms)
        ref = full.f_test(names)
        assert F == pytest.approx(float(ref.fvalue), rel=1e-9) and p_ols == pytest.approx(float(ref.pvalue), rel=1e-9)
    t = run_level_test([{"model": m, "wp": x, "relative": v} for m, x, v in zip(models, w, y)], n_perm=99)
    assert t["b2"] == pytest.approx(full.params[3], rel=1e-9) and t["se_b2"] == pytest.approx(full.bse[3], rel=1e-9)
    assert t["t_quadratic"] == pytest.approx(full.tvalues[3], rel=1e-9)


def test_permutations_stay_within_models_and_random_ones_approach_full_enumeration():
    models = ["a"] * 4 + ["b"] * 3
    perms = strata_permutations(models, 500, np.random.default_rng(0))
    assert all(sorted(p[:4]) == [0, 1, 2, 3] and sorted(p[4:]) == [4, 5, 6] for p in perms)
    # every within-model permutation (4! x 3! = 144) against 9,999 random ones: the same p up to Monte Carlo error
    rng = np.random.default_rng(2)
    w = wp(np.array([0, 0.01, 0.1, 1, 0, 0.1, 1]))
    y = 0.5 - 0.3 * (w - 0.6) ** 2 + rng.normal(0, 0.03, 7)
    X = design(models, w)
    every = np.array([list(p) + [4 + i for i in q] for p in itertools.permutations(range(4))
                      for q in itertools.permutations(range(3))])
    for keep in ([0, 1], [0, 1, 2]):
        exact = permutation_p(y, X, keep, every)[2]
        random = permutation_p(y, X, keep, strata_permutations(models, 9999, rng))[2]
        assert abs(exact - random) < 4 * math.sqrt(exact * (1 - exact) / 9999) + 1e-3, (keep, exact, random)


def test_fieller_set_is_where_the_slope_test_does_not_reject():
    V = np.array([[0.04, -0.03], [-0.03, 0.05]])
    t = 2.12
    grid = np.linspace(-30, 30, 60001)
    for b1, b2, kind in ((1.2, -1.0, "bounded"), (1.0, -0.2, "two rays"), (0.05, -0.01, "whole line")):
        got, lo, hi = fieller(b1, b2, V, t)
        assert got == kind
        inside = np.abs(b1 + 2 * b2 * grid) <= t * np.sqrt(V[0, 0] + 4 * grid * V[0, 1] + 4 * grid ** 2 * V[1, 1])
        if kind == "bounded":
            expect = (grid >= lo) & (grid <= hi)
        else:
            expect = (grid <= lo) | (grid >= hi) if kind == "two rays" else np.ones_like(grid, dtype=bool)
        assert (inside == expect).mean() > 0.9999, kind  # up to the grid's resolution at the ends
    s = vertex_summary(0.05, -0.01, V, t, [0, 1])
    assert s["critical_plw"] is not None and s["ci_wp"] is None and "unbounded" in s["reason"]


def test_fieller_interval_covers_the_true_vertex_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    models = ["a"] * 10 + ["b"] * 10
    w = np.tile(wp(np.array(PAPER_PLWS)), 2)
    X = design(models, w)
    covered, n = 0, 400
    for _ in range(n):  # the true vertex at w_p 0.65 (PLW 0.24), the paper's
        y = 0.5 - 0.8 * (w - 0.65) ** 2 + rng.normal(0, 0.06, 20)
        beta = np.linalg.lstsq(X, y, rcond=None)[0]
        s2 = ((y - X @ beta) ** 2).sum() / 16
        V = s2 * np.linalg.inv(X.T @ X)[2:, 2:]
        kind, lo, hi = fieller(beta[2], beta[3], V, t_quantile(0.975, 16))
        covered += (kind == "bounded" and lo <= 0.65 <= hi) or (kind == "two rays" and not lo < 0.65 < hi) or \
            kind == "whole line"
    assert abs(covered / n - 0.95) < 3 * math.sqrt(0.95 * 0.05 / n), covered / n  # exact for normal errors


def simulated_scores(rng, effect, corr=0.5):
    """The paper's design: 10 PLWs x 2 models x 13 benchmarks, one run each. A run's benchmarks share its noise
    (within-run correlation corr), each benchmark has its own level and scale, and `effect` * -(w_p - 0.65)^2 moves
    every benchmark of a run alike."""
    rows = []
    levels, scales = rng.uniform(0.3, 0.7, len(BENCHMARKS)), rng.uniform(0.01, 0.05, len(BENCHMARKS))
    for model, offset in (("llama1", 0.0), ("llama2", 0.8)):
        for plw in PAPER_PLWS:
            run = offset - effect * (wp(plw) - 0.65) ** 2 + rng.normal(0, math.sqrt(corr))
            for (b, g), level, scale in zip(BENCHMARKS, levels, scales):
                rows.append({"model": model, "plw": plw, "benchmark": b, "group": g,
                             "score": level + scale * (run + rng.normal(0, math.sqrt(1 - corr)))})
    return rows


def rates(effect, n, seed):
    """(run-level p_joint < 0.05, run-level concave p_quadratic < 0.05, beta Wald p < 0.05, beta not converged)
    counts over n simulated studies, through analyze() itself (relative scores, run aggregates, both tests)"""
    rng = np.random.default_rng(seed)
    counts = np.zeros(4, dtype=int)
    for _ in range(n):
        res = analyze(simulated_scores(rng, effect))["datasets"]["default"]
        t, b = res["test"]["all"], res["beta"]["all"]
        counts += [t["p_joint"] < 0.05, t["p_quadratic"] < 0.05 and t["concave"],
                   b["converged"] is True and b["p"] < 0.05, b["converged"] is False]
    return counts


def test_run_level_test_holds_its_level_where_the_beta_wald_test_does_not():
    # no PLW effect, within-run correlation 0.5: a 5% test should reject about 5% of 40 studies (<= 15% asked)
    joint, quad, beta, failed = rates(effect=0.0, n=40, seed=11)
    print(f"\nno effect, 40 studies: run-level p_joint {joint}/40, p_quadratic {quad}/40; beta Wald {beta}/40 "
          f"(+ {failed} not converged)")
    assert joint <= 6 and quad <= 6
    assert beta >= 12  # the paper's model counts 13 correlated scores per run as independent: measured, not assumed


def test_run_level_test_detects_a_concave_effect_shared_by_a_runs_benchmarks():
    # the effect moves a run from PLW 0 to the vertex by 3 sd of the run's shared noise: 3 / (0 - 0.65)^2
    joint, quad, beta, failed = rates(effect=3 / 0.65 ** 2, n=10, seed=12)
    print(f"\nconcave effect, 10 studies: run-level p_joint {joint}/10, p_quadratic {quad}/10; beta Wald {beta}/10 "
          f"(+ {failed} not converged)")
    assert quad >= 8 and joint >= 8
