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
import numpy as np

from .._jit import jit

SGD = 0
MOMENTUM = 1
NESTEROV = 2
ADAM = 3

CODES = {"sgd": SGD, "momentum": MOMENTUM, "nesterov": NESTEROV, "adam": ADAM}


@jit
def adam_step_size(lr, beta1, beta2, t):
    """Adam's bias-corrected step size at step t (t counts from 1)."""
    return lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


@jit
def update_range(params, grad, state1, state2, lo, hi, kind, lr, momentum, beta1, beta2, eps,
                 decay):
    """Apply one optimizer step to params[lo:hi] given its gradient grad[lo:hi]
    plus the L2 term ``decay * params`` (decay = lambda on weights, 0 on biases),
    in one pass over memory (the update is bandwidth-bound).

    ``lr`` is already Adam's bias-corrected step size when kind == ADAM.  All
    hyperparameters arrive in the parameters' dtype, so no float64 promotion.
    """
    one = params.dtype.type(1)
    if kind == SGD:
        for i in range(lo, hi):
            params[i] -= lr * (grad[i] + decay * params[i])
    elif kind == MOMENTUM:
        for i in range(lo, hi):
            v = momentum * state1[i] - lr * (grad[i] + decay * params[i])
            state1[i] = v
            params[i] += v
    elif kind == NESTEROV:
        for i in range(lo, hi):
            g = grad[i] + decay * params[i]
            v = momentum * state1[i] - lr * g
            state1[i] = v
            params[i] += momentum * v - lr * g
    else:
        for i in range(lo, hi):
            g = grad[i] + decay * params[i]
            m = beta1 * state1[i] + (one - beta1) * g
            v = beta2 * state2[i] + (one - beta2) * g * g
            state1[i] = m
            state2[i] = v
            params[i] -= lr * m / (np.sqrt(v) + eps)
