"""
Beta regression by maximum likelihood, in numpy: logit link for the mean, log link for a constant precision.

    y_i ~ Beta(mu_i * phi, (1 - mu_i) * phi),   logit(mu_i) = x_i . beta,   log(phi) = gamma

fit_beta(y, X) returns the estimates, the observed-information covariance and standard errors; the same model as
statsmodels' BetaModel(y, X) with its default links (tested to 1e-6). squeeze() maps [0, 1] data into (0, 1);
wald() and vertex() are its tests; beta_quadratic() is the paper's model of a PLW study's relative scores, which
analyze.py reports beside the run-level test (runtest.py). Definitions and references: docs/analysis.md.

The paper's model counts every benchmark score of a run as an independent observation; a run's benchmarks share
that run's noise, so its p-values are too small (tests/test_runtest.py measures how much) and it is not the test
this project's conclusions rest on.
"""
import math

import numpy as np

from eval.scores import plw_from_wp

Z95 = 1.959963984540054  # the normal 97.5% quantile: two-sided 95% intervals
MAX_LOG_PHI = 40.0  # phi = 2e17: past this the scores are fit exactly and the likelihood has no maximum


# -----------------------------------------------------------------------------
# special functions (no scipy): recurrence up to x >= 10, then the asymptotic series

def lgamma(x):
    return np.array([math.lgamma(v) for v in np.ravel(x)]).reshape(np.shape(x))


def digamma(x):
    x = np.array(x, dtype=np.float64)
    acc = np.zeros_like(x)
    for _ in range(10):  # psi(x) = psi(x + 1) - 1/x; any x > 0 reaches >= 10 in 10 steps
        small = x < 10
        acc -= np.where(small, 1.0 / x, 0.0)
        x = np.where(small, x + 1.0, x)
    r = 1.0 / (x * x)
    series = r * (1/12 - r * (1/120 - r * (1/252 - r * (1/240 - r * (1/132)))))
    return acc + np.log(x) - 0.5 / x - series


def trigamma(x):
    x = np.array(x, dtype=np.float64)
    acc = np.zeros_like(x)
    for _ in range(10):  # psi'(x) = psi'(x + 1) + 1/x^2
        small = x < 10
        acc += np.where(small, 1.0 / (x * x), 0.0)
        x = np.where(small, x + 1.0, x)
    r = 1.0 / (x * x)
    series = 1 / 6 - r * (1 / 30 - r * (1 / 42 - r * (1 / 30 - r * (5 / 66))))
    return acc + 1.0 / x + 0.5 * r + series * r / x


def norm_sf2(z):
    """two-sided normal tail probability P(|Z| >= |z|)"""
    return math.erfc(abs(z) / math.sqrt(2.0))


# -----------------------------------------------------------------------------
# the model

def squeeze(y, n=None):
    """Smithson & Verkuilen (2006): (y (n - 1) + 0.5) / n maps [0, 1] into (0, 1); n = the sample size."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size if n is None else n
    return (y * (n - 1) + 0.5) / n


def loglik_derivs(theta, y, X):
    """log-likelihood, gradient and Hessian in theta = (beta, gamma = log phi)"""
    beta, phi = theta[:-1], math.exp(theta[-1])
    mu = 1.0 / (1.0 + np.exp(-(X @ beta)))
    a, b = mu * phi, (1.0 - mu) * phi
    ly, l1y = np.log(y), np.log1p(-y)
    ll = float(np.sum(lgamma(phi) - lgamma(a) - lgamma(b) + (a - 1) * ly + (b - 1) * l1y))
    da, db = digamma(a), digamma(b)
    ta, tb = trigamma(a), trigamma(b)
    r = (ly - l1y) - (da - db)                              # y* - mu*
    dl_dmu = phi * r
    dl_dphi = mu * r + digamma(phi) - db + l1y
    d2_mu = -phi * phi * (ta + tb)
    d2_muphi = r - phi * (mu * ta - (1.0 - mu) * tb)
    d2_phi = trigamma(phi) - mu * mu * ta - (1.0 - mu) ** 2 * tb
    m1 = mu * (1.0 - mu)                                    # d mu / d eta for the logit link
    m2 = m1 * (1.0 - 2.0 * mu)                              # d2 mu / d eta2
    g_eta = dl_dmu * m1
    h_eta = d2_mu * m1 * m1 + dl_dmu * m2
    h_etag = d2_muphi * m1 * phi                            # d phi / d gamma = phi
    h_g = d2_phi * phi * phi + dl_dphi * phi
    grad = np.append(X.T @ g_eta, np.sum(dl_dphi * phi))
    k = X.shape[1]
    H = np.empty((k + 1, k + 1))
    H[:k, :k] = (X.T * h_eta) @ X
    H[:k, k] = H[k, :k] = X.T @ h_etag
    H[k, k] = np.sum(h_g)
    return ll, grad, H


def start_values(y, X):
    """OLS of logit(y) on X for beta; phi by moments, mean(mu (1 - mu)) / var(y - mu) - 1 (as Ferrari &
    Cribari-Neto suggest, simplified)"""
    beta = np.linalg.lstsq(X, np.log(y / (1.0 - y)), rcond=None)[0]
    mu = 1.0 / (1.0 + np.exp(-(X @ beta)))
    phi = np.mean(mu * (1.0 - mu)) / max(np.var(y - mu), 1e-12) - 1.0
    return np.append(beta, math.log(max(phi, 1.0)))


def newton_converged(grad, H, ll, tol):
    """At a maximum: the Hessian is negative definite and the full Newton step is below tol, or its predicted gain in
    log-likelihood is below rounding (there, rounding noise in the gradient keeps the step near 1e-10 forever, and
    a damped step can fall by a rounding error, so the test is on the undamped step, whatever the damping)."""
    try:
        L = np.linalg.cholesky(-H)
    except np.linalg.LinAlgError:
        return False
    step = np.linalg.solve(L.T, np.linalg.solve(L, grad))
    return bool(np.abs(step).max() < tol or 0.5 * float(grad @ step) < 1e-13 * max(1.0, abs(ll)))


def fit_beta(y, X, max_iter=200, tol=1e-10):
    """
    Maximum likelihood: Newton steps, with Levenberg damping added to the negative Hessian until it is positive
    definite and the step raises the likelihood; converged when a full Newton step is below tol or its predicted
    gain in log-likelihood is below rounding (newton_converged). Returns {params (beta), log_phi, phi, cov (of all of
    theta, from the observed information), se (of beta), se_log_phi, loglik, iterations}. y must lie in (0, 1) (see
    squeeze); raises ValueError when the likelihood has no maximum to find (e.g. a singular design).
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    assert y.ndim == 1 and X.shape == (y.size, X.shape[1]) and ((y > 0) & (y < 1)).all()
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(f"singular design: rank {np.linalg.matrix_rank(X)} < {X.shape[1]} columns")
    theta = start_values(y, X)
    ll, grad, H = loglik_derivs(theta, y, X)
    eye = np.eye(H.shape[0])
    lam = 0.0
    for it in range(1, max_iter + 1):
        if newton_converged(grad, H, ll, tol):
            break
        for _ in range(60):  # raise the damping until the step is uphill (a trust region in all but name)
            try:
                L = np.linalg.cholesky(-H + lam * eye)
            except np.linalg.LinAlgError:
                lam = max(1e-8, 10 * lam)
                continue
            step = np.linalg.solve(L.T, np.linalg.solve(L, grad))
            if theta[-1] + step[-1] > MAX_LOG_PHI:
                raise ValueError("beta regression: the precision diverges (the mean model fits the scores exactly; "
                                 "too few scores per parameter)")
            new = loglik_derivs(theta + step, y, X)
            if np.isfinite(new[0]) and new[0] >= ll:
                break
            lam = max(1e-8, 10 * lam)
        else:
            raise ValueError("beta regression: no step raises the likelihood")
        theta = theta + step
        ll, grad, H = new
        lam = lam / 10 if lam > 1e-8 else 0.0
    else:
        raise ValueError(f"beta regression did not converge in {max_iter} iterations")
    try:
        cov = np.linalg.inv(-H)
    except np.linalg.LinAlgError:
        raise ValueError("beta regression: singular information matrix at the estimate") from None
    if not (np.diag(cov) > 0).all():
        raise ValueError("beta regression: the estimate is not a maximum (information not positive definite)")
    se = np.sqrt(np.diag(cov))
    return {"params": theta[:-1], "log_phi": float(theta[-1]), "phi": math.exp(theta[-1]), "cov": cov,
            "se": se[:-1], "se_log_phi": float(se[-1]), "loglik": ll, "iterations": it}


# -----------------------------------------------------------------------------
# tests on the fitted quadratic

def wald(b, se):
    """z = b / se and its two-sided p-value"""
    z = b / se
    return z, norm_sf2(z)


def vertex(b1, b2, cov):
    """The vertex w* = -b1 / (2 b2) of b1 w + b2 w^2, its delta-method standard error from cov (2x2, of b1 and
    b2), and the 95% interval w* +- 1.96 se."""
    w = -b1 / (2.0 * b2)
    g = np.array([-1.0 / (2.0 * b2), b1 / (2.0 * b2 * b2)])  # d w* / d (b1, b2)
    se = math.sqrt(float(g @ np.asarray(cov) @ g))
    return w, se, (w - Z95 * se, w + Z95 * se)


# -----------------------------------------------------------------------------
# the paper's model of a PLW study: a beta regression of every relative score, quadratic in w_p

BETA_KEYS = ("n", "benchmarks", "models", "converged", "b1", "se_b1", "b2", "se_b2", "z", "p", "phi", "loglik",
             "vertex_wp", "vertex_se", "critical_plw", "ci_wp", "ci_plw", "ci_clipped", "reason")


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
    except ValueError as e:  # no estimate: reported as not converged, never as a number
        out.update(converged=False, reason=str(e))
        return out
    out["converged"] = True
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
