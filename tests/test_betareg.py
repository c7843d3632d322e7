"""
eval/betareg.py and analyze.py's beta regression: the special functions against scipy, the fit against statsmodels'
BetaModel (same design, logit mean link, log precision link: its defaults) on synthetic data and on the committed
study scores, and the test and interval on data with a known concave quadratic.
"""
import math
import os

import numpy as np
import pytest

from eval.analyze import analyze
from eval.betareg import beta_design, beta_quadratic, digamma, fit_beta, lgamma, squeeze, trigamma, vertex, wald
from eval.scores import load_scores, normalize_rows, plw_from_wp, relative_scores, wp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "tests", "fixtures", "study_2026-11-25_scores.jsonl")
PLWS = (0.0, 5e-4, 2.236e-3, 0.01, 0.02463, 0.05, 0.1, 0.2463, 0.5, 1.0)


def test_special_functions_match_scipy():
    special = pytest.importorskip("scipy.special")
    x = np.logspace(-8, 4, 400)
    assert np.allclose(digamma(x), special.psi(x), rtol=1e-12, atol=1e-12)
    assert np.allclose(trigamma(x), special.polygamma(1, x), rtol=1e-12, atol=0)
    assert np.allclose(lgamma(x), special.gammaln(x), rtol=1e-14, atol=1e-14)


def test_squeeze_wald_vertex_by_hand():
    assert squeeze([0.0, 0.5, 1.0]).tolist() == pytest.approx([0.5 / 3, 1.5 / 3, 2.5 / 3])  # n = 3
    z, p = wald(-1.96, 1.0)
    assert z == -1.96 and p == pytest.approx(0.0499958, abs=1e-6)
    # w* = -b1 / (2 b2); gradient (-1/(2 b2), b1/(2 b2^2)) = (0.25, 0.25) at b1 = 2, b2 = -2
    w, se, (lo, hi) = vertex(2.0, -2.0, [[0.04, 0.01], [0.01, 0.09]])
    assert w == 0.5 and se == pytest.approx(math.sqrt(0.0625 * (0.04 + 0.02 + 0.09)))
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * se, 0.5 + 1.959964 * se))


def statsmodels_fit(y, X):
    betareg = pytest.importorskip("statsmodels.othermod.betareg")
    res = betareg.BetaModel(y, X).fit(method="newton", maxiter=100, disp=0)  # logit and log links by default
    assert type(res.model.link).__name__ == "Logit" and type(res.model.link_precision).__name__ == "Log"
    return res


def assert_same_fit(ours, res):
    assert np.abs(ours["params"] - res.params[:-1]).max() < 1e-6
    assert abs(ours["log_phi"] - res.params[-1]) < 1e-6
    assert np.abs(ours["se"] - res.bse[:-1]).max() < 1e-6
    assert abs(ours["se_log_phi"] - res.bse[-1]) < 1e-6
    assert ours["loglik"] == pytest.approx(res.llf, rel=1e-10)


@pytest.mark.parametrize("phi,n", [(30.0, 240), (3.0, 120)])
def test_fit_equals_statsmodels_synthetic(phi, n):
    rng = np.random.default_rng(int(phi))
    w = rng.choice(wp(np.array(PLWS)), n)
    bench = rng.integers(0, 4, n)
    X = np.column_stack([np.ones(n)] + [(bench == k).astype(float) for k in (1, 2, 3)] + [w, w * w])
    mu = 1 / (1 + np.exp(-(X @ np.array([-0.4, 0.3, -0.2, 0.5, 2.6, -2.0]))))
    y = rng.beta(mu * phi, (1 - mu) * phi)
    assert_same_fit(fit_beta(y, X), statsmodels_fit(y, X))


def test_fit_equals_statsmodels_on_the_study_scores():
    obs = [r for r in relative_scores(load_scores(STUDY)) if r["relative"] is not None]
    y, X, names = beta_design(obs)
    assert X.shape == (30, 5) and names[-2:] == ["w_p", "w_p^2"]
    ours, res = fit_beta(y, X), statsmodels_fit(y, X)
    assert_same_fit(ours, res)
    b = beta_quadratic(obs)  # what the report prints
    assert (b["b1"], b["b2"]) == pytest.approx(tuple(res.params[-3:-1]), abs=1e-6)
    assert (b["se_b1"], b["se_b2"]) == pytest.approx(tuple(res.bse[-3:-1]), abs=1e-6)
    assert b["p"] == pytest.approx(res.pvalues[-2], abs=1e-6)  # statsmodels' Wald p-value of w_p^2


def concave_rows(b2, seeds=3, phi=150.0, seed=0):
    """Accuracy-like scores with logit(mean) = benchmark + b1 w_p + b2 w_p^2, vertex w_p 0.652 (PLW 0.242) when
    b2 < 0, at every PLW of the grid, several seeds."""
    rng = np.random.default_rng(seed)
    b1 = -2 * b2 * 0.652
    rows = []
    for bench, c in (("arc_challenge", -0.8), ("piqa", 0.6), ("winogrande", 0.0), ("wmt16_en_de", -1.5)):
        for p in PLWS:
            for s in range(seeds):
                m = 1 / (1 + math.exp(-(c + b1 * wp(p) + b2 * wp(p) ** 2)))
                rows.append({"dataset": "short", "plw": p, "seed": s, "benchmark": bench,
                             "score": float(rng.beta(m * phi, (1 - m) * phi))})
    return rows


def test_known_concave_quadratic_is_found():
    res = analyze(concave_rows(-1.5))["datasets"]["short"]
    b = res["beta"]["all"]
    assert b["n"] == 120 and b["b2"] < 0 and b["p"] < 1e-4
    lo, hi = b["ci_plw"]
    assert lo < plw_from_wp(0.652) < hi and 0 < lo and hi < 1  # covers the true critical PLW 0.242
    assert lo < b["critical_plw"] < hi
    assert set(res["beta"]) == {"all", "I", "mc", "short_gen"}  # Group I = mc + short_gen, both present
    assert res["table"][0]["seeds"] == 3 and res["table"][0]["sd"] > 0


def test_convex_quadratic_has_no_critical_plw():
    b = analyze(concave_rows(+1.5))["datasets"]["short"]["beta"]["all"]
    assert b["b2"] > 0 and b["critical_plw"] is None and "not concave" in b["reason"]


def test_too_little_data_gives_a_reason():
    rows = [r for r in normalize_rows(concave_rows(-1.5, seeds=1)) if r["plw"] in (0.0, 1.0)]
    b = beta_quadratic(relative_scores(rows))
    assert b["b2"] is None and "at least 3" in b["reason"]
