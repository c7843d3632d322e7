"""
The statistics of a PLW study beside the run-level test (runtest.py), the paper's beta regression (betareg.py) and
the paired comparisons (paired.py): t and F tails, the least-squares quadratic in w_p (a picture, not a test), and
the training-loss RSD of the paper's stability mechanism. Definitions: docs/analysis.md.
"""
import math

import numpy as np

from eval.scores import GROUPS, normalize_rows, plw_from_wp, read_jsonl

# -----------------------------------------------------------------------------
# Student's t and Fisher's F tails, through the regularized incomplete beta function (no scipy at run time)

def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b): its continued fraction (evaluated with Lentz's method) on
    the side of the mean where it converges fast, I_x(a, b) = 1 - I_{1-x}(b, a) on the other."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),          # the even and odd terms of the
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fraction's m-th pair
            d = 1.0 + num * d
            c = 1.0 + num / c
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def t_sf2(t, df):
    """two-sided tail P(|T| >= |t|) of Student's t with df degrees of freedom"""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def f_sf(f, d1, d2):
    """upper tail P(F >= f) of Fisher's F with (d1, d2) degrees of freedom"""
    return 1.0 if f <= 0 else betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


def t_quantile(q, df):
    """The q quantile of Student's t (q in (0.5, 1)), by bisection on t_sf2 to 1e-12"""
    lo, hi = 0.0, 1.0
    while t_sf2(hi, df) > 2 * (1 - q):
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf2(mid, df) > 2 * (1 - q) else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def t975(df):
    """The 97.5% quantile of Student's t with df degrees of freedom (two-sided 95% intervals)."""
    if not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    return t_quantile(0.975, df)


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


def null_fit(reason):
    return {"a": None, "b": None, "c": None, "vertex_wp": None, "critical_plw": None, "concave": None,
            "r2": None, "n": 0, "wp_range": None, "reason": reason}


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


# the loss under each normalisation train.py logs (loss_hf first: the paper's stack logged it, docs/analysis.md), then
# the unweighted prompt and completion losses
LOG_KEYS = ("loss_hf", "loss", "loss_micro_mean", "loss_nonzero", "completion_loss", "prompt_loss")


def log_summary(log_rows, window=5):
    """loss_rsd for each of LOG_KEYS present in the log (None for a key no row has), plus the window count."""
    out = {f"{k}_rsd": (loss_rsd(log_rows, k, window) if any(k in r for r in log_rows) else None) for k in LOG_KEYS}
    out["windows"] = len({r["iter"] for r in log_rows}) // window
    out["window"] = window
    return out

