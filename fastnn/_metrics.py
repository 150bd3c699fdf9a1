"""Scores computed without scikit-learn (it is an optional dependency)."""
import numpy as np


def r2_score(y, pred, w=None):
    """R^2 of ``pred`` against ``y`` (both n x outputs), weighted by ``w``,
    averaged over outputs; a constant output scores 1 if predicted exactly,
    else 0 (scikit-learn's convention)."""
    y = y.astype(np.float64)
    pred = pred.astype(np.float64)
    w = np.ones(len(y)) if w is None else w
    mean = np.average(y, axis=0, weights=w)
    ss_res = (w[:, None] * (y - pred) ** 2).sum(axis=0)
    ss_tot = (w[:, None] * (y - mean) ** 2).sum(axis=0)
    return r2_from_sums(ss_res, ss_tot)


def r2_from_sums(ss_res, ss_tot):
    """R^2 averaged over outputs from the per-output residual and total sums
    of squares (also used by fastnn.distributed, which sums on the workers)."""
    ss_res = np.asarray(ss_res, dtype=np.float64)
    ss_tot = np.asarray(ss_tot, dtype=np.float64)
    safe = np.where(ss_tot > 0, ss_tot, 1.0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / safe, np.where(ss_res > 0, 0.0, 1.0))
    return float(r2.mean())
