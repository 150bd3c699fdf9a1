"""Shared fixtures.  Inputs are fresh random numbers on every run; the seed is
printed in the test's report so that a failure can be replayed with
FASTNN_TEST_SEED=<seed>."""
import os

import numpy as np
import pytest

ODD_SIZES = (1, 7, 33, 129)


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FASTNN_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed} (replay with FASTNN_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def central_difference(params, i, loss, h=1e-6):
    """(loss() at params[i] + h - loss() at params[i] - h) / 2h, with params[i]
    put back: the finite-difference gradient the gradient checks compare with."""
    keep = params[i]
    params[i] = keep + h
    up = loss()
    params[i] = keep - h
    down = loss()
    params[i] = keep
    return (up - down) / (2 * h)


_HIDDEN = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh,
           "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)), "identity": lambda z: z}


def rows_off_relu_kinks(net, X, margin=1e-3):
    """Mask of the rows of X at which no relu unit's input lies within
    ``margin`` of its kink at 0 (a NumPy float64 forward pass).  There the
    loss is not differentiable, and a central difference whose step moves
    that input across 0 is no check of the gradient (seen: a pre-activation
    1.9e-6 from 0, a weight step of 1e-6 times |x| = 4.4, relative error 5e-4).
    The gradient checks of relu networks keep only these rows."""
    a = np.asarray(X, dtype=np.float64)
    keep = np.ones(a.shape[0], dtype=bool)
    for W, b, act in zip(net.weights[:-1], net.biases[:-1], net.activations):
        z = a @ W + b
        if act == "relu":
            keep &= (np.abs(z) >= margin).all(axis=1)
        a = _HIDDEN[act](z)
    return keep
