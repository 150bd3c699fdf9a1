"""Kernel benchmarks: the three GEMM products at every layer of every case,
activations and their derivatives, and the softmax cross-entropy gradient.

Each timed call repeats the kernel ``reps`` times, a count fixed by the
problem size alone (so two commits time the same work), chosen so a call
lasts well over 1 ms (asv_runner 0.3.2 times calls with setup at number=1).
JIT compilation happens in setup.  ``track_*`` report GFLOP/s or GB/s for
display only: asv takes lower as better, so gate on ``time_*``.
"""
import time

import numpy as np

from . import _kernels as K
from ._ref import CASES

# (m, k, n) = (batch, fan_in, fan_out) of every layer of every case, deduplicated
SHAPES = sorted({(c.batch, a, b) for c in CASES.values()
                 for a, b in zip(c.sizes[:-1], c.sizes[1:])}
                # and a single output (binary classifier, regression): the
                # dot-product path of gemm, as the spiral's 3 classes
                | {(200, 64, 1)})
SHAPE_NAMES = [f"{m}x{k}x{n}" for m, k, n in SHAPES]
PRODUCTS = ["nn", "tn", "nt"]
# FLOPs per timed call: at 200 GFLOP/s (about this machine's sgemm) still 1 ms
GEMM_FLOPS_PER_CALL = 2e8


def _reps(work, per_call):
    return max(1, int(round(per_call / work)))


def _track(fn, reps, work, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, time.perf_counter() - t)
    return reps * work / best / 1e9


class Gemm:
    """C = A W (nn), G += A^T D (tn), C = D W^T (nt) at the cases' layer sizes."""

    params = (PRODUCTS, SHAPE_NAMES)
    param_names = ["product", "m_k_n"]
    timeout = 300

    def setup(self, product, shape):
        K.require(K.product_forward, K.product_weight_grad, K.product_backward)
        m, k, n = SHAPES[SHAPE_NAMES.index(shape)]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)    # activations in
        w = rng.standard_normal((k, n), dtype=np.float32)    # weights
        d = rng.standard_normal((m, n), dtype=np.float32)    # deltas
        if product == "nn":
            out = np.empty((m, n), dtype=np.float32)
            wt = np.empty((n, k), dtype=np.float32)
            self.fn = lambda: K.product_forward(a, w, wt, out)
        elif product == "tn":
            g = np.zeros((k, n), dtype=np.float32)
            at = np.empty((k, m), dtype=np.float32)
            dt = np.empty((n, m), dtype=np.float32)
            self.fn = lambda: K.product_weight_grad(a, d, at, dt, g)
        else:
            out = np.empty((m, k), dtype=np.float32)
            self.fn = lambda: K.product_backward(d, w, out)
        self.flops = 2.0 * m * k * n
        self.reps = _reps(self.flops, GEMM_FLOPS_PER_CALL)
        self.fn()   # compile / load from cache

    def time_gemm(self, product, shape):
        for _ in range(self.reps):
            self.fn()

    def track_gemm_gflops(self, product, shape):
        return _track(self.fn, self.reps, self.flops)

    track_gemm_gflops.unit = "GFLOP/s"


ACT_SHAPES = ["128x256", "512x1024"]
# Elements touched per timed call (about 1 ms at a few GB/s)
ACT_ELEMS_PER_CALL = 2 ** 22


class Activations:
    """Z = h(Z + b) and delta *= h'(A) for relu, sigmoid, tanh (float32)."""

    params = (["relu", "sigmoid", "tanh"], ACT_SHAPES)
    param_names = ["activation", "m_n"]

    def setup(self, act, shape):
        K.require(K.add_bias_activate, K.scale_by_derivative)
        if act not in K.ACT_CODES:
            raise NotImplementedError(act)
        code = K.ACT_CODES[act]
        m, n = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        self.Z = rng.standard_normal((m, n), dtype=np.float32)
        self.b = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
        # Outputs chosen so h'(A) stays >= 0.24: delta starts at 1e30 and,
        # scaled ``reps`` (<= 64) times, never reaches float32's subnormals,
        # which would time the FPU's slow path instead of the kernel.
        lo, hi = {"relu": (-1, 1), "sigmoid": (0.45, 0.55), "tanh": (-0.3, 0.3)}[act]
        self.A = rng.uniform(lo, hi, (m, n)).astype(np.float32)
        self.delta = (rng.uniform(1, 2, (m, n)) * 1e30).astype(np.float32)
        self.code = code
        self.reps = min(64, _reps(m * n, ACT_ELEMS_PER_CALL))
        self.bytes = 8.0 * m * n      # read + write of one float32 array
        K.add_bias_activate(self.Z.copy(), self.b, code)
        K.scale_by_derivative(self.delta.copy(), self.A, code)

    def time_add_bias_activate(self, act, shape):
        for _ in range(self.reps):
            K.add_bias_activate(self.Z, self.b, self.code)

    def time_scale_by_derivative(self, act, shape):
        for _ in range(self.reps):
            K.scale_by_derivative(self.delta, self.A, self.code)

    def track_add_bias_activate_gbs(self, act, shape):
        return _track(lambda: K.add_bias_activate(self.Z, self.b, self.code),
                      self.reps, self.bytes)

    track_add_bias_activate_gbs.unit = "GB/s"


LOSS_SHAPES = sorted({(c.batch, c.sizes[-1]) for c in CASES.values()})
LOSS_NAMES = [f"{m}x{n}" for m, n in LOSS_SHAPES]


class SoftmaxXent:
    """Softmax cross-entropy gradient of the output layer (in place)."""

    params = LOSS_NAMES
    param_names = ["m_n"]

    def setup(self, shape):
        K.require(K.softmax_xent_grad)
        m, n = map(int, shape.split("x"))
        rng = np.random.default_rng(0)
        # Z is overwritten by delta, which stays bounded: repeating the call
        # on its own output keeps every value finite and normal.
        self.Z = rng.standard_normal((m, n), dtype=np.float32)
        self.T = np.eye(n, dtype=np.float32)[rng.integers(0, n, m)]
        self.w = np.ones(m, dtype=np.float32)
        self.scale = np.float32(1.0 / m)
        self.reps = _reps(m * n, 2 ** 17)
        self.bytes = 12.0 * m * n     # Z read and written, T read
        K.softmax_xent_grad(self.Z.copy(), self.T, self.w, self.scale)

    def time_softmax_xent_grad(self, shape):
        for _ in range(self.reps):
            K.softmax_xent_grad(self.Z, self.T, self.w, self.scale)

    def track_softmax_xent_grad_gbs(self, shape):
        return _track(lambda: K.softmax_xent_grad(self.Z, self.T, self.w, self.scale),
                      self.reps, self.bytes)

    track_softmax_xent_grad_gbs.unit = "GB/s"
