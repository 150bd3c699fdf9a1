"""The three training products against np.dot at every layer of every case.

    python -m fastnn.bench.products [--dtype float32]

Run it with the thread counts pinned (e.g. NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1) and, on machines that set OPENBLAS_CORETYPE, with it
unset, so that NumPy uses the BLAS kernel made for the CPU.

Each product is timed as the training step performs it: by the step's own
code on a one-layer network's workspace (trainer.make_workspace), packing
included, repeated inside one compiled call (as the step calls it: no
Python dispatch, no allocation; the pack workspace reused):

* forward: z = a W + b, the step's ``forward`` of a logits layer;
* dW: a^T delta, the step's weights pass (gradient only, no update) with
  its deltas packed first as the rows pass packs them: in blocks of rows
  of dW (kernels.step.block_rows), and as delta^T a for a layer of fewer
  outputs than a vector has lanes (kernels.step.weight_gradient_rows);
* backward: out = d W^T from the W^T the step keeps current in its update.

Against np.dot with ``out=`` from Python, as a NumPy step calls it (median
of 7 runs of about 2e8 FLOPs each).  The last column, ``+W^T``, is the
backward product with W^T packed from W first in each repetition: what a
product standing alone would cost; the step pays that transpose only row
block by row block inside its update, and only for layers after the first
(the first layer has no backward product).
"""
import argparse
import statistics
import time

import numpy as np

from .._jit import jit
from ..kernels.gemm import gemm, pack_transpose
from ..kernels.step import (FIRST, NO_ACC, NO_ACTIVATION, STORE, WEIGHTS, Batch, Update,
                            forward, no_keep, no_panels, pack_deltas, pack_workspace_elements,
                            step_pass)
from .cases import CASES


@jit
def forward_reps(net, work, m, reps):
    """``reps`` times the step's forward product of a one-layer network (a
    logits layer: z = a W + b) on the m rows in work.Xb."""
    for _ in range(reps):
        forward(net, work.Xb[:m], work.act_ws, work.act_off, FIRST, m, work.pack[0],
                no_panels(net))


@jit
def weight_grad_reps(net, batch, work, update, reps):
    """``reps`` times the step's weight gradient of a one-layer network, a^T
    delta over the batch's rows (a in work.Xb, delta over the logits): the
    deltas packed as the rows pass packs them, then the weights pass."""
    m = batch.order.shape[0]
    for _ in range(reps):
        pack_deltas(net, work, m, FIRST, m, FIRST)
        step_pass(WEIGHTS, net, batch, work, update, np.int64(1))


@jit
def backward_reps(d, WT, out, pack, reps):
    """``reps`` times out = d W^T from W^T kept (the step's backward product)."""
    for _ in range(reps):
        gemm(d, WT, out, NO_ACC, STORE, NO_ACTIVATION, WT[0], out, pack)


@jit
def backward_transposing_reps(d, W, WT, out, pack, reps):
    """``reps`` times W^T packed from W, then out = d W^T."""
    for _ in range(reps):
        pack_transpose(W, WT)
        gemm(d, WT, out, NO_ACC, STORE, NO_ACTIVATION, WT[0], out, pack)


def _median_seconds(fn, per_call):
    """Median over 7 runs of fn()'s seconds / per_call (fn run once first)."""
    fn()
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) / per_call)
    return statistics.median(runs)


def shapes():
    """(m, k, n) = (batch, fan_in, fan_out) of every layer of every case,
    deduplicated, and a single-output layer (a binary classifier's or a
    regression's: gemm's dot-product path, as the spiral's 3 classes)."""
    return sorted({(c.batch, a, b) for c in CASES.values()
                   for a, b in zip(c.sizes[:-1], c.sizes[1:])} | {(200, 64, 1)})


def step_operands(m, k, n, dtype, rng):
    """A one-layer network (k -> n) and its training workspace for m rows,
    with random inputs a (in work.Xb) and deltas d (over the logits); returns
    (net bundle, Batch, Work, gradient-only Update, a, W, d)."""
    from ..network import Network
    from ..trainer import make_workspace
    network = Network([k, n], dtype=dtype, seed=0)
    work = make_workspace(network, m, k, n)
    a = rng.standard_normal((m, k)).astype(dtype)
    d = rng.standard_normal((m, n)).astype(dtype)
    work.Xb[:] = a
    work.act_ws[work.act_off[0]:work.act_off[0] + m * n] = d.ravel()
    W = network.params[:k * n].reshape(k, n)
    zero = network.dtype.type(0)
    batch = Batch(work.Xb, work.Tb, np.ones(m, network.dtype), np.arange(m, dtype=np.int64),
                  network.dtype.type(1.0 / m))
    # the types the trainer gives the step (the step's shared signature, so
    # the step is called by its symbol as in training): a gradient, no update
    keep, kept = no_keep(network.dtype)
    update = Update(network.params, network.params, np.int64(0), zero, zero, zero, zero, zero,
                    zero, False, keep, kept, False, False)
    return network._bundle(), batch, work, update, a, W, d


def main(argv=None):
    """Print GFLOP/s of fastnn's products and their ratio to np.dot."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench.products",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"{'m x k x n':<15}{'forward GF/s':>14}{'x np':>6}{'dW GF/s':>10}{'x np':>6}"
          f"{'backward GF/s':>15}{'x np':>6}{'+W^T x np':>11}{'np.dot GF/s':>13}")
    for m, k, n in shapes():
        net, batch, work, update, a, W, d = step_operands(m, k, n, dt, rng)
        z, out, G = np.empty((m, n), dt), np.empty((m, k), dt), np.empty((k, n), dt)
        WT = np.ascontiguousarray(W.T)
        # the backward product's C has k columns: the pack of a layer k wide
        pack = np.empty(pack_workspace_elements((n, k), dt.itemsize), dt)
        flops = 2.0 * m * k * n
        reps = max(1, int(2e8 / flops))
        r = np.int64(reps)

        def numpy_reps(product):
            return lambda: [product() for _ in range(reps)]

        pairs = [
            (lambda: forward_reps(net, work, np.int64(m), r),
             numpy_reps(lambda: np.dot(a, W, out=z))),
            (lambda: weight_grad_reps(net, batch, work, update, r),
             numpy_reps(lambda: np.dot(a.T, d, out=G))),
            (lambda: backward_reps(d, WT, out, pack, r),
             numpy_reps(lambda: np.dot(d, W.T, out=out))),
            (lambda: backward_transposing_reps(d, W, np.empty_like(WT), out, pack, r),
             numpy_reps(lambda: np.dot(d, W.T, out=out))),
        ]
        cells = []
        ref_gf = None
        for fast, ref in pairs:
            t_fast = _median_seconds(fast, reps)
            t_ref = _median_seconds(ref, reps)
            cells += [f"{flops / t_fast / 1e9:.1f}", f"{t_ref / t_fast:.2f}"]
            ref_gf = ref_gf or flops / t_ref / 1e9
        print(f"{f'{m}x{k}x{n}':<15}{cells[0]:>14}{cells[1]:>6}{cells[2]:>10}{cells[3]:>6}"
              f"{cells[4]:>15}{cells[5]:>6}{cells[7]:>11}{ref_gf:>13.1f}")


if __name__ == "__main__":
    main()
