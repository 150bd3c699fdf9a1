"""The benchmark cases (issue 3) and their random data.

Every peer trains the same network (relu hidden layers, softmax output,
float32, SGD with momentum 0.9) on the same data, made here from a seed.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One benchmark case: layer sizes (input first), batch size, and the
    number of samples in an epoch (chosen so an epoch takes well under a few
    seconds in NumPy on this machine)."""

    name: str
    sizes: tuple
    batch: int
    n_samples: int

    @property
    def n_weights(self):
        """Number of weights (biases excluded) in the network."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    def step_flops(self, rows):
        """FLOPs of one training step on ``rows`` samples: about 6 per weight
        per sample (2 forward, 2 for dW, 2 for dA)."""
        return 6.0 * self.n_weights * rows


CASES = {c.name: c for c in [
    Case("spiral", (2, 100, 3), 300, 300),
    Case("mnist", (784, 256, 10), 128, 128 * 40),
    Case("mnist_deep", (784, 512, 256, 10), 128, 128 * 20),
    Case("wide", (784, 1024, 1024, 10), 512, 512 * 4),
    Case("tiny_batch", (784, 128, 10), 16, 16 * 160),
]}

LR = 0.01
MOMENTUM = 0.9


def make_data(case, seed=0, n_samples=None):
    """Random float32 features (standard normal) and integer labels for ``case``."""
    import numpy as np

    n = case.n_samples if n_samples is None else n_samples
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, case.sizes[0]), dtype=np.float32)
    y = rng.integers(0, case.sizes[-1], size=n).astype(np.int64)
    return X, y


# Set on some machines (including the development and CI machines) because
# older OpenBLAS builds misbehave there; they force a slower BLAS kernel on a
# current NumPy.  ``native_blas=True`` removes them for a peer comparison.
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def thread_env(threads, base=None, native_blas=False):
    """A copy of ``base`` (default os.environ) with every thread pool pinned to
    ``threads``: numba, OpenMP, OpenBLAS, MKL.  Children get this environment,
    so each library runs on the same number of cores.  ``native_blas`` drops
    BLAS_OVERRIDES so that NumPy, scikit-learn and torch use the BLAS kernel
    made for this CPU."""
    import os

    env = dict(os.environ if base is None else base)
    if native_blas:
        for var in BLAS_OVERRIDES:
            env.pop(var, None)
    if threads:
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env
