"""
Beta regression by maximum likelihood, in numpy: logit link for the mean, log link for a constant precision.

    y_i ~ Beta(mu_i * phi, (1 - mu_i) * phi),   logit(mu_i) = x_i . beta,   log(phi) = gamma

fit_beta(y, X) returns the estimates, the observed-information covariance and standard errors; the same model as
statsmodels' BetaModel(y, X) with its default links (tested to 1e-6). squeeze() maps [0, 1] data into (0, 1);
wald() and vertex() are the tests analyze.py reports. Definitions and references: docs/analysis.md.
"""
import math

import numpy as np

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


def fit_beta(y, X, max_iter=200, tol=1e-10):
    """
    Maximum likelihood: Newton steps, with Levenberg damping added to the negative Hessian until it is positive
    definite and the step raises the likelihood; converged when a full Newton step is below tol. Returns {params
    (beta), log_phi, phi, cov (of all of theta, from the observed information), se (of beta), se_log_phi, loglik,
    iterations}. y must lie in (0, 1) (see squeeze);
    raises ValueError when the likelihood has no maximum to find (e.g. a singular design).
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    assert y.ndim == 1 and X.shape == (y.size, X.shape[1]) and ((y > 0) & (y < 1)).all()
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(f"singular design: rank {np.linalg.matrix_rank(X)} < {X.shape[1]} columns")
    theta = start_values(y, X)
    ll, grad, H = loglik_derivs(theta, y, X)
    eye = np.eye(H.shape[0])
    lam, done = 0.0, False
    for it in range(1, max_iter + 1):
        for _ in range(60):  # raise the damping until the step is uphill (a trust region in all but name)
            try:
                L = np.linalg.cholesky(-H + lam * eye)
            except np.linalg.LinAlgError:
                lam = max(1e-8, 10 * lam)
                continue
            step = np.linalg.solve(L.T, np.linalg.solve(L, grad))
            done = lam == 0 and np.abs(step).max() < tol  # converged: a full Newton step that small
            if done or theta[-1] + step[-1] > MAX_LOG_PHI:
                break
            new = loglik_derivs(theta + step, y, X)
            if np.isfinite(new[0]) and new[0] >= ll:
                break
            lam = max(1e-8, 10 * lam)
        else:
            raise ValueError("beta regression: no step raises the likelihood")
        if done:
            break
        if theta[-1] + step[-1] > MAX_LOG_PHI:
            raise ValueError("beta regression: the precision diverges (the mean model fits the scores exactly; "
                             "too few scores per parameter)")
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
