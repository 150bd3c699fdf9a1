"""The compiled training step: forward, loss gradient, backward, update.

A step is two parallel passes, each writing disjoint memory:

1. rows (``rows_pass``): the batch is cut into one shard per thread; each
   shard runs its rows forward, writes the loss gradient over its logits and
   runs its rows backward (delta_l for every layer);
2. weights (``weights_pass``): dW_l = a_{l-1}^T delta_l over the whole batch
   in blocks of GRAD_BLOCK_ROWS rows of dW_l (a cut that depends only on the
   layer sizes), db_l = column sums of delta_l with the first block, then, in
   the same task while the block is in cache, the L2 term, the optimizer
   update of those rows of W_l (and of b_l) and their W^T for the next step's
   backward product.

Two parallel regions per step, because waking the thread pool costs tens of
microseconds each time (measured on the 2-core machine, passive OpenMP
waiting: about 30 us for an empty region).  Every element is computed by the
same arithmetic whichever shard, block or thread computes it (gemm.py), and
the loss and L2 parts are added in a fixed order, so the result has the same
bits with 1 thread or 16.

Flat layout: layer l has W_l (dims[l] x dims[l+1]) at params[offs[l]:], then
its bias b_l; WT_l = W_l^T (l >= 1) sits at the same offset of WT.  The
activations a_l of the whole batch (m x dims[l+1]) live at act_ws[act_off[l]:],
the deltas at the same offsets of delta_ws.
"""
import numpy as np
from numba import prange

from .._jit import jit, pjit
from .activations import IDENTITY
from .gemm import EPI_BIAS_ACT, EPI_DERIV, EPI_STORE, column_sums_acc, gemm, pack_transpose
from .losses import loss_grad, output_transform
from .optim import ADAM, adam_step_size, update_range

# The loss is summed over groups of this many rows, then over the groups in
# order; shards of the batch start at multiples of it.
LOSS_GROUP_ROWS = 16
# Rows of dW (and of W) per block of the weights pass: a multiple of the
# register tile's rows; 784 inputs give 9 blocks, enough to balance a few threads.
GRAD_BLOCK_ROWS = 96

# Flags passed to gemm as typed int64 values rather than literal constants:
# numba compiles one specialisation per distinct literal argument, and every
# extra copy of the GEMM costs cold-start compile time.
NO_ACC = np.int64(0)
STORE = np.int64(EPI_STORE)
BIAS_ACT = np.int64(EPI_BIAS_ACT)
DERIV = np.int64(EPI_DERIV)


@jit
def layer_weights(params, offs, dims, l):
    """Views (W_l, b_l) into the flat buffer ``params``."""
    k = dims[l]
    n = dims[l + 1]
    start = offs[l]
    W = params[start:start + k * n].reshape((k, n))
    b = params[start + k * n:start + k * n + n]
    return W, b


@jit
def layer_rows(ws, off, m, n):
    """The (m x n) matrix of a layer stored at ws[off:] (activations or deltas)."""
    return ws[off:off + m * n].reshape((m, n))


@jit
def forward(params, offs, dims, acts, X, act_ws, act_off, r0, r1):
    """Forward pass of rows r0:r1 of X; returns those rows of the logits z_L.

    z_l = h(a_{l-1} W_l + b_l): W_l is read in place, bias and activation are
    the product's epilogue, and a_l stays in act_ws for the backward pass.
    Training and prediction share this function; a row's result does not
    depend on the other rows.
    """
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    a = X[r0:r1]
    for l in range(n_layers):
        W, b = layer_weights(params, offs, dims, l)
        Z = layer_rows(act_ws, act_off[l], m, dims[l + 1])[r0:r1]
        code = acts[l] if l < n_layers - 1 else IDENTITY
        gemm(a, W, Z, NO_ACC, BIAS_ACT, code, b, Z)
        a = Z
    return a


@jit
def backward(WT, offs, dims, acts, m, act_ws, act_off, delta_ws, r0, r1):
    """delta_{l-1} = (delta_l W_l^T) * h'(a_{l-1}) for rows r0:r1, l = L-1..1.

    delta_L is already written over the logits (the last layer of act_ws);
    h' is the backward product's epilogue, computed from the outputs a_{l-1}.
    """
    n_layers = dims.shape[0] - 1
    delta = layer_rows(act_ws, act_off[n_layers - 1], m, dims[n_layers])[r0:r1]
    for l in range(n_layers - 1, 0, -1):
        k = dims[l]
        n = dims[l + 1]
        WT_l = WT[offs[l]:offs[l] + k * n].reshape((n, k))
        a_in = layer_rows(act_ws, act_off[l - 1], m, k)[r0:r1]
        out = layer_rows(delta_ws, act_off[l - 1], m, k)[r0:r1]
        gemm(delta, WT_l, out, NO_ACC, DERIV, acts[l - 1], WT_l[0], a_in)
        delta = out


@jit
def pack_weights_t(params, offs, dims, WT):
    """WT_l = W_l^T for every layer but the first, at the offsets of ``params``.

    The backward product delta_l W_l^T (l >= 1; the input layer needs no
    delta) reads W^T with rows contiguous.  The weights pass keeps WT up to
    date after each update; this fills it at the start of an epoch.
    """
    for l in range(1, dims.shape[0] - 1):
        k = dims[l]
        n = dims[l + 1]
        W, _ = layer_weights(params, offs, dims, l)
        pack_transpose(W, WT[offs[l]:offs[l] + k * n].reshape((n, k)))


@jit
def weight_block_count(dims):
    """Number of blocks of the weights pass: GRAD_BLOCK_ROWS rows of each W_l."""
    count = 0
    for l in range(dims.shape[0] - 1):
        count += (dims[l] + GRAD_BLOCK_ROWS - 1) // GRAD_BLOCK_ROWS
    return count


@jit
def weight_block(dims, t):
    """(layer l, first row, end row) of block t of the weights pass."""
    l = 0
    first = 0
    while t >= first + (dims[l] + GRAD_BLOCK_ROWS - 1) // GRAD_BLOCK_ROWS:
        first += (dims[l] + GRAD_BLOCK_ROWS - 1) // GRAD_BLOCK_ROWS
        l += 1
    i0 = (t - first) * GRAD_BLOCK_ROWS
    return l, i0, min(dims[l], i0 + GRAD_BLOCK_ROWS)


@jit
def weight_gradient_rows(offs, dims, X, act_ws, act_off, delta_ws, grad, l, i0, i1):
    """Rows i0:i1 of dW_l = a_{l-1}^T delta_l over the whole batch, and
    db_l = sum_i delta_l[i, :] with the block that starts at row 0."""
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    k = dims[l]
    n = dims[l + 1]
    a_in = X if l == 0 else layer_rows(act_ws, act_off[l - 1], m, k)
    if l == n_layers - 1:
        delta = layer_rows(act_ws, act_off[l], m, n)   # delta_L, over the logits
    else:
        delta = layer_rows(delta_ws, act_off[l], m, n)
    gW, gb = layer_weights(grad, offs, dims, l)
    gemm(a_in.T[i0:i1], delta, gW[i0:i1], NO_ACC, STORE, IDENTITY, gb, gW[i0:i1])
    if i0 == 0:
        gb[:] = 0
        column_sums_acc(delta, gb)


@jit
def update_rows(params, grad, WT, offs, dims, l, i0, i1, l2, state1, state2, kind, hyper,
                apply_update):
    """Rows i0:i1 of W_l (and b_l with the block at row 0): the L2 term, then
    the optimizer step and W_l^T of the new rows (``apply_update``), or else
    the L2 term added to the gradient.  Returns lambda * sum W^2 over the rows
    (before the step)."""
    k = dims[l]
    n = dims[l + 1]
    lo = offs[l] + i0 * n
    hi = offs[l] + i1 * n
    squares = 0.0
    if l2 != 0:
        for i in range(lo, hi):
            p = np.float64(params[i])
            squares += p * p
    if apply_update:
        lr, momentum, beta1, beta2, eps = hyper
        update_range(params, grad, state1, state2, lo, hi, kind, lr, momentum, beta1, beta2,
                     eps, l2)
        if i0 == 0:  # the bias: no weight decay
            update_range(params, grad, state1, state2, offs[l] + k * n, offs[l] + k * n + n,
                         kind, lr, momentum, beta1, beta2, eps, params.dtype.type(0))
        if l >= 1:
            W, _ = layer_weights(params, offs, dims, l)
            WT_l = WT[offs[l]:offs[l] + k * n].reshape((n, k))
            pack_transpose(W[i0:i1], WT_l[:, i0:i1])
    elif l2 != 0:
        for i in range(lo, hi):
            grad[i] += l2 * params[i]
    return np.float64(l2) * squares


@jit
def gather_rows(X, T, w, order, Xb, Tb, wb, r0, r1):
    """Rows r0:r1 of the batch: Xb[i] = X[order[i]] (and T, w likewise)."""
    for i in range(r0, r1):
        src = order[i]
        Xb[i, :] = X[src, :]
        Tb[i, :] = T[src, :]
        wb[i] = w[src]


@pjit
def rows_pass(params, WT, offs, dims, acts, output, X, T, w, order, Xb, Tb, wb, scale,
              act_ws, act_off, delta_ws, group_loss, group_correct, threads):
    """Gather, forward, loss gradient and backward of the batch X[order] (into
    Xb, Tb, wb, which the weights pass then reads); WT must hold W^T.

    The rows are cut into one shard per thread (``threads``: numba's thread
    count, passed in because calling numba.get_num_threads here would keep
    the caller out of numba's cache), at multiples of LOSS_GROUP_ROWS; each
    shard gathers its own rows, so they are in its core's cache.  The loss is
    summed per group of rows and the groups in order, so it does not depend
    on the number of threads.  Returns (summed weighted loss, correct rows).
    """
    m = order.shape[0]
    n_groups = (m + LOSS_GROUP_ROWS - 1) // LOSS_GROUP_ROWS
    n_shards = max(1, min(threads, n_groups))
    groups_per_shard = (n_groups + n_shards - 1) // n_shards
    Xm = Xb[:m]
    for s in prange(n_shards):
        g0 = min(n_groups, s * groups_per_shard)
        g1 = min(n_groups, g0 + groups_per_shard)
        r0 = g0 * LOSS_GROUP_ROWS
        r1 = min(m, g1 * LOSS_GROUP_ROWS)
        if r1 > r0:
            gather_rows(X, T, w, order, Xb, Tb, wb, r0, r1)
            z = forward(params, offs, dims, acts, Xm, act_ws, act_off, r0, r1)
            for g in range(g0, g1):  # delta_L written over the logits, group by group
                q0 = g * LOSS_GROUP_ROWS
                q1 = min(m, q0 + LOSS_GROUP_ROWS)
                group_loss[g], group_correct[g] = loss_grad(
                    z[q0 - r0:q1 - r0], Tb[q0:q1], wb[q0:q1], scale, output)
            backward(WT, offs, dims, acts, m, act_ws, act_off, delta_ws, r0, r1)
    loss = 0.0
    correct = 0
    for g in range(n_groups):  # in row order: same bits for any thread count
        loss += group_loss[g]
        correct += group_correct[g]
    return loss, correct


@pjit
def weights_pass(params, grad, WT, offs, dims, X, act_ws, act_off, delta_ws, l2, state1,
                 state2, kind, hyper, apply_update, l2_parts, threads):
    """The weight gradient of the batch whose rows pass has run, then (with
    ``apply_update``) the update, block by block.  Returns (lambda/2) sum W^2
    before the step (the L2 part of the loss), summed in block order.

    Thread s takes blocks s, s + threads, ...: the big blocks of the first
    layer come first, so dealing them out in turn balances the threads (numba
    hands each thread one contiguous range of a prange).  Which thread
    computes a block changes no bits.
    """
    n_blocks = weight_block_count(dims)
    n_workers = max(1, min(threads, n_blocks))
    for s in prange(n_workers):
        for t in range(s, n_blocks, n_workers):
            l, i0, i1 = weight_block(dims, t)
            weight_gradient_rows(offs, dims, X, act_ws, act_off, delta_ws, grad, l, i0, i1)
            l2_parts[t] = update_rows(params, grad, WT, offs, dims, l, i0, i1, l2, state1,
                                      state2, kind, hyper, apply_update)
    total = 0.0
    for t in range(n_blocks):
        total += l2_parts[t]
    return 0.5 * total


@jit
def loss_gradient(params, WT, offs, dims, acts, output, X, T, w, act_ws, act_off, delta_ws,
                  grad, Xb, Tb, wb, l2, l2_parts, group_loss, group_correct, threads):
    """Loss of the whole batch (X, T, w), with L2, and its gradient in ``grad``.

    The same arithmetic as one training step, without the update: this is what
    the finite-difference tests check.
    """
    weight = 0.0
    for i in range(w.shape[0]):
        weight += np.float64(w[i])
    scale = params.dtype.type(1.0 / weight)
    pack_weights_t(params, offs, dims, WT)
    order = np.arange(X.shape[0])
    loss, _ = rows_pass(params, WT, offs, dims, acts, output, X, T, w, order, Xb, Tb, wb, scale,
                        act_ws, act_off, delta_ws, group_loss, group_correct, threads)
    zero = params.dtype.type(0)
    l2_loss = weights_pass(params, grad, WT, offs, dims, Xb[:X.shape[0]], act_ws, act_off,
                           delta_ws, l2, params, params, 0, (zero, zero, zero, zero, zero),
                           False, l2_parts, threads)
    return loss / weight + l2_loss


@jit
def train_epoch(params, WT, offs, dims, acts, output, X, T, w, order, batch_size,
                act_ws, act_off, delta_ws, grad, Xb, Tb, wb, l2,
                state1, state2, kind, hyper, step, l2_parts, group_loss, group_correct,
                threads):
    """One pass over the rows of X in the order ``order``, in mini-batches.

    ``hyper`` is (lr, momentum, beta1, beta2, eps).  Every array is a
    workspace made once per fit (see trainer.Workspace), so nothing is
    allocated here.  Returns (summed weighted loss, summed weight, correct,
    steps taken, finite).  When a batch's loss is not finite the epoch stops
    *before* that batch's update, so params hold the last finite step.
    """
    n = order.shape[0]
    loss_total = 0.0
    weight_total = 0.0
    correct_total = 0
    steps = 0
    lr, momentum, beta1, beta2, eps = hyper
    pack_weights_t(params, offs, dims, WT)   # then kept current by each update
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        rows = order[start:start + m]
        batch_weight = 0.0
        for i in range(m):
            batch_weight += np.float64(w[rows[i]])
        scale = params.dtype.type(1.0 / batch_weight)
        batch_loss, correct = rows_pass(params, WT, offs, dims, acts, output, X, T, w, rows,
                                        Xb, Tb, wb, scale, act_ws, act_off, delta_ws,
                                        group_loss, group_correct, threads)
        correct_total += correct
        if not np.isfinite(batch_loss):
            return loss_total, weight_total, correct_total, steps, False
        step_lr = lr
        if kind == ADAM:
            step_lr = params.dtype.type(adam_step_size(np.float64(lr), np.float64(beta1),
                                                       np.float64(beta2), step + steps + 1))
        l2_loss = weights_pass(params, grad, WT, offs, dims, Xb[:m], act_ws, act_off, delta_ws,
                               l2, state1, state2, kind, (step_lr, momentum, beta1, beta2, eps),
                               True, l2_parts, threads)
        steps += 1
        loss_total += batch_loss + l2_loss * batch_weight
        weight_total += batch_weight
    return loss_total, weight_total, correct_total, steps, True


@jit
def predict_block(params, offs, dims, acts, output, X, out, act_ws, act_off):
    """Network outputs for the rows of X into ``out`` (on the calling thread)."""
    z = forward(params, offs, dims, acts, X, act_ws, act_off, 0, X.shape[0])
    output_transform(z, output)
    out[:, :] = z


@pjit
def predict_rows(params, offs, dims, acts, output, X, out, act_ws, act_off, block, threads):
    """Predictions for every row of X into ``out``, in blocks of ``block`` rows.

    One parallel region: worker s (at most one per workspace slot in act_ws)
    takes blocks s, s + workers, ...  A row's result does not depend on the
    block it falls in, nor on the number of threads.
    """
    n = X.shape[0]
    n_blocks = (n + block - 1) // block
    workers = max(1, min(threads, act_ws.shape[0], n_blocks))
    for s in prange(workers):
        for bi in range(s, n_blocks, workers):
            r0 = bi * block
            r1 = min(n, r0 + block)
            predict_block(params, offs, dims, acts, output, X[r0:r1], out[r0:r1],
                          act_ws[s], act_off)
