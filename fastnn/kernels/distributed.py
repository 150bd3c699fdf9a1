"""The two halves of a training step, split for data-parallel training
(fastnn.distributed): the gradient of some rows of a batch (on a worker) and
the update from a summed gradient (on every worker, to its replica).

Both reuse the compiled step of kernels/step.py rather than a second
gradient: ``chunk_gradient`` is ``loss_gradient`` with the batch's rows and
scale given (so a chunk computes its share of the *global* batch's mean), and
``apply_update`` runs the same ``update_range`` calls in the same block order
as the weights pass of a local step (kernels.step.update_rows), so one chunk
holding every row gives the local Trainer's bits.

Kept in their own file: numba's cache is per source file, and editing
step.py would make every user of the single-machine path recompile.
"""
import numpy as np

from .._jit import jit
from .gemm import vector_lanes
from .optim import update_range
from .step import (FIRST, ROWS, WEIGHTS, Batch, batch_weight, gradient_only, pack_weights_t,
                   step_pass, sum_squares, update_for_step, weight_block,
                   weight_block_count)


@jit(refcount=False)
def chunk_gradient(net, X, T, w, rows, scale, work, threads):
    """Gradient of rows ``rows`` of (X, T, w) as part of a batch whose summed
    weight is 1 / ``scale``, into work.grad (no L2 term: the driver adds it
    once); returns (summed weighted loss, correct rows) of those rows."""
    pack_weights_t(net.params, net.offs, net.dims, work.WT)
    batch = Batch(X, T, w, rows, scale)
    update = gradient_only(net.params, net.params.dtype.type(0))
    loss, correct = step_pass(ROWS, net, batch, work, update, threads)
    step_pass(WEIGHTS, net, batch, work, update, threads)
    return loss, correct


@jit(refcount=False)
def apply_update(net, grad, update, step):
    """One optimizer step on net.params from the batch gradient ``grad`` (no
    L2 in it), as the weights pass of kernels.step does it: weight rows in
    that pass's blocks (step.weight_block) with ``update.l2`` as decay, each
    bias with the block at its layer's row 0 and no decay.  ``step`` counts steps before
    this one (Adam's bias correction).  Returns (l2/2) sum W^2 before the
    step, plus update_range's probe: NaN once an update overflowed, as in the
    local step."""
    params = net.params
    lr = update_for_step(update, step + 1).lr
    l2 = update.l2
    zero = params.dtype.type(0)
    total = 0.0
    probe = 0.0
    lanes = vector_lanes(params)
    for t in range(weight_block_count(net.dims, lanes)):
        l, i0, i1 = weight_block(net.dims, t, lanes)
        k = net.dims[l]
        n = net.dims[l + 1]
        lo = net.offs[l] + i0 * n
        hi = net.offs[l] + i1 * n
        squares = sum_squares(params, lo, hi, 0.0) if l2 != 0 else 0.0
        s1, s2 = update.state1, update.state2
        probe += update_range(params[lo:hi], grad[lo:hi], s1[lo:hi], s2[lo:hi], FIRST,
                              hi - lo, update.kind, lr, update.momentum, update.beta1,
                              update.beta2, update.eps, l2)
        if i0 == 0:
            b0 = net.offs[l] + k * n
            probe += update_range(params, grad, s1, s2, b0, b0 + n, update.kind, lr,
                                  update.momentum, update.beta1, update.beta2, update.eps, zero)
        total += np.float64(l2) * squares
    return 0.5 * total + probe


@jit
def add_step_loss(loss_total, batch_loss, l2_loss, batch_weight):
    """The epoch's running loss after one step, as kernels.step.train_epoch
    adds it (compiled with the same flags, so the same rounding)."""
    return loss_total + (batch_loss + l2_loss * batch_weight)


@jit
def step_weights(w, rows, offsets):
    """Summed weight (float64) of rows[offsets[s]:offsets[s+1]] for each step
    s, added in epoch order as train_epoch adds a batch's weights."""
    n_steps = offsets.shape[0] - 1
    out = np.zeros(n_steps)
    for s in range(n_steps):
        out[s] = batch_weight(w, rows[offsets[s]:offsets[s + 1]])
    return out
