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
