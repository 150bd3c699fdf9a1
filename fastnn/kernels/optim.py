"""Optimizer updates on the flat parameter buffer, one element at a time.

The update rules follow scikit-learn's MLP optimizers (so its users get the
same trajectories):

* SGD:       p -= lr g
* MOMENTUM:  v = mu v - lr g;  p += v
* NESTEROV:  v = mu v - lr g;  p += mu v - lr g
* ADAM:      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
             p -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)

L2 weight decay enters as g += lambda p on weights (never on biases).
"""
import numba
import numpy as np
from numba import types

from .._jit import jit
from .shared import SharedFunction, calls_by_symbol

SGD = 0
MOMENTUM = 1
NESTEROV = 2
ADAM = 3

CODES = {"sgd": SGD, "momentum": MOMENTUM, "nesterov": NESTEROV, "adam": ADAM}

# How many of the state buffers (state1, then state2) each rule writes: plain
# SGD none, momentum its velocity, Adam both moments (kernels.step.keep_range
# keeps the same ones; trainer._Snapshot copies only these)
STATE_BUFFERS_WRITTEN = {SGD: 0, MOMENTUM: 1, NESTEROV: 1, ADAM: 2}


@jit
def adam_step_size(lr, beta1, beta2, t):
    """Adam's bias-corrected step size at step t (t counts from 1)."""
    return lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


@jit(fastmath=False, refcount=False)
def update_range_kernel(params, grad, state1, state2, lo, hi, kind, lr, momentum, beta1, beta2,
                        eps, decay):
    """Apply one optimizer step to params[lo:hi] given its gradient grad[lo:hi]
    plus the L2 term ``decay * params`` (decay = lambda on weights, 0 on biases),
    in one pass over memory (the update is bandwidth-bound).

    ``lr`` is already Adam's bias-corrected step size when kind == ADAM.  All
    hyperparameters arrive in the parameters' dtype, so no float64 promotion.
    Returns 0.0 when every new value is finite, NaN otherwise: the overflow
    probe of the training step, taken in the same pass (as a second pass over
    200k float32 values it cost 66 us, the update itself 29 us, znver5).

    The loops run over views from index 0: with ``range(lo, hi)`` numba's
    negative-index wraparound kept LLVM from vectorising them (0.7 ns per
    float32 momentum update on znver5; 16 lanes at a time after, 4.7x faster).
    No fast-math flags at all: elementwise arithmetic gains nothing from
    reassociation, and with 'contract' LLVM fused the terms of
    b1 m + (1 - b1) g into a multiply-add one way in one compiled copy of this
    loop and the other way in another (a one-chunk Dask fit and the local fit
    then differed in the last bit, tests/test_dask.py); IEEE operations give
    the same bits in every copy, vector lanes and remainder alike.
    """
    one = params.dtype.type(1)
    n = hi - lo
    p = params[lo:hi]
    g = grad[lo:hi]
    s1 = state1[lo:hi]
    s2 = state2[lo:hi]
    # an OR of the per-value tests vectorises (a float sum would need reassociation)
    nonfinite = False
    if kind == SGD:
        for i in range(n):
            new = p[i] - lr * (g[i] + decay * p[i])
            p[i] = new
            nonfinite |= not np.isfinite(new)
    elif kind == MOMENTUM:
        for i in range(n):
            v = momentum * s1[i] - lr * (g[i] + decay * p[i])
            s1[i] = v
            new = p[i] + v
            p[i] = new
            nonfinite |= not np.isfinite(new)
    elif kind == NESTEROV:
        for i in range(n):
            gi = g[i] + decay * p[i]
            v = momentum * s1[i] - lr * gi
            s1[i] = v
            new = p[i] + (momentum * v - lr * gi)
            p[i] = new
            nonfinite |= not np.isfinite(new)
    else:
        for i in range(n):
            gi = g[i] + decay * p[i]
            m = beta1 * s1[i] + (one - beta1) * gi
            v = beta2 * s2[i] + (one - beta2) * gi * gi
            s1[i] = m
            s2[i] = v
            new = p[i] - lr * m / (np.sqrt(v) + eps)
            p[i] = new
            nonfinite |= not np.isfinite(new)
    return np.nan if nonfinite else 0.0


def _update_range_signature(dtype):
    f = numba.from_dtype(np.dtype(dtype))
    vector = types.Array(f, 1, "C")
    return (vector, vector, vector, vector, types.int64, types.int64, types.int64,
            f, f, f, f, f, f)


# Compiled once per dtype and called by symbol (shared.py) from the weights
# pass and the cluster update, rather than linked into each (and its four
# vectorised loops optimised again there).  Without fast-math flags its bits
# are the same in every copy anyway.
UPDATE_RANGE = SharedFunction(update_range_kernel, _update_range_signature,
                              "fastnn.update_range")


@calls_by_symbol(UPDATE_RANGE)
def update_range(params, grad, state1, state2, lo, hi, kind, lr, momentum, beta1, beta2, eps,
                 decay):
    """update_range_kernel (by its shared symbol in compiled code)."""
    return update_range_kernel(params, grad, state1, state2, lo, hi, kind, lr, momentum,
                               beta1, beta2, eps, decay)
