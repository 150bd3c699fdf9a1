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
