"""The compiled training step: forward, loss gradient, backward, update.

A mini-batch of m rows is cut into S shards (S depends only on m and the
trainer's settings, never on the number of threads).  The step has three
parallel parts, each of which writes disjoint memory:

1. rows:     each shard runs its rows forward, writes the loss gradient over
             its logits and runs its rows backward (delta_l for every layer);
2. weights:  dW_l = a_{l-1}^T delta_l over the whole batch, cut into blocks of
             rows of dW (a fixed cut that depends only on the layer sizes);
             db_l = column sums of delta_l;
3. update:   L2 and the optimizer, in fixed chunks of the flat buffer.

Every element is computed by the same arithmetic whichever shard, block or
thread computes it (gemm.py), and the per-shard losses are added in shard
order, so the result has the same bits with 1 thread or 16.

Flat layout: layer l has W_l (dims[l] x dims[l+1]) at params[offs[l]:], then
its bias b_l.  The activations a_l of the whole batch (m x dims[l+1]) live at
act_ws[act_off[l]:], the deltas at the same offsets of delta_ws.
"""
import numpy as np
from numba import prange

from .._jit import jit, pjit
from .activations import IDENTITY
from .gemm import EPI_BIAS_ACT, EPI_DERIV, EPI_STORE, column_sums_acc, gemm, pack_transpose
from .losses import loss_grad, output_transform
from .optim import ADAM, adam_step_size, update_range

# Parameters are reduced and updated in chunks of this many elements, one
# chunk per prange iteration: big enough to amortise scheduling, small enough
# to balance two threads on a few-thousand-parameter network.
UPDATE_CHUNK = 8192
# The loss is summed over groups of this many rows, then over the groups in
# order; shards of the batch start at multiples of it.
LOSS_GROUP_ROWS = 16
# Rows of W per block of the parallel W^T packing.
PACK_ROWS = 128
# Rows of dW per weight-gradient block: a multiple of the register tile's
# rows; 784 inputs give 9 blocks, enough to balance a few threads.
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


@pjit
def pack_weights_t(params, offs, dims, WT):
    """WT_l = W_l^T for every layer but the first, at the offsets of ``params``.

    The backward product delta_l W_l^T (l >= 1; the input layer needs no
    delta) reads W^T with rows contiguous; packing once per step serves every
    shard of the batch.  Blocks of PACK_ROWS rows of each W_l are transposed
    in parallel.
    """
    n_layers = dims.shape[0] - 1
    n_blocks = 0
    for l in range(1, n_layers):
        n_blocks += (dims[l] + PACK_ROWS - 1) // PACK_ROWS
    for t in prange(n_blocks):
        l = 1
        first = 0
        while t >= first + (dims[l] + PACK_ROWS - 1) // PACK_ROWS:  # the layer of block t
            first += (dims[l] + PACK_ROWS - 1) // PACK_ROWS
            l += 1
        k = dims[l]
        n = dims[l + 1]
        i0 = (t - first) * PACK_ROWS
        i1 = min(k, i0 + PACK_ROWS)
        W, _ = layer_weights(params, offs, dims, l)
        WT_l = WT[offs[l]:offs[l] + k * n].reshape((n, k))
        pack_transpose(W[i0:i1], WT_l[:, i0:i1])


@jit
def grad_block_count(dims):
    """Number of weight-gradient blocks: GRAD_BLOCK_ROWS rows of each dW_l."""
    count = 0
    for l in range(dims.shape[0] - 1):
        count += (dims[l] + GRAD_BLOCK_ROWS - 1) // GRAD_BLOCK_ROWS
    return count


@jit
def weight_gradient_block(offs, dims, X, act_ws, act_off, delta_ws, grad, t):
    """Block t of the weight gradient: rows i0:i1 of dW_l = a_{l-1}^T delta_l
    over the whole batch (and db_l = sum_i delta_l[i, :] with the first block)."""
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    l = 0
    first = 0
    while True:  # find the layer of block t
        blocks = (dims[l] + GRAD_BLOCK_ROWS - 1) // GRAD_BLOCK_ROWS
        if t < first + blocks:
            break
        first += blocks
        l += 1
    k = dims[l]
    n = dims[l + 1]
    i0 = (t - first) * GRAD_BLOCK_ROWS
    i1 = min(k, i0 + GRAD_BLOCK_ROWS)
    a_in = X if l == 0 else layer_rows(act_ws, act_off[l - 1], m, k)
    if l == n_layers - 1:
        delta = layer_rows(act_ws, act_off[l], m, n)
    else:
        delta = layer_rows(delta_ws, act_off[l], m, n)
    gW, gb = layer_weights(grad, offs, dims, l)
    gemm(a_in.T[i0:i1], delta, gW[i0:i1], NO_ACC, STORE, IDENTITY, gb, gW[i0:i1])
    if i0 == 0:
        gb[:] = 0
        column_sums_acc(delta, gb)


@pjit
def batch_gradient(params, WT, offs, dims, acts, output, X, T, w, scale,
                   act_ws, act_off, delta_ws, grad, group_loss, group_correct, threads):
    """The gradient of the batch (X, T, w) into ``grad``; W^T must be packed in WT.

    The rows are cut into one shard per thread (``threads``: numba's thread
    count, passed in because calling numba.get_num_threads here would keep
    the caller out of numba's cache), at multiples of LOSS_GROUP_ROWS;
    the loss is summed per group of rows and the groups in order, so neither
    the gradient nor the loss depends on the number of threads.
    Returns (summed weighted loss, correct rows).
    """
    m = X.shape[0]
    n_groups = (m + LOSS_GROUP_ROWS - 1) // LOSS_GROUP_ROWS
    n_shards = max(1, min(threads, n_groups))
    groups_per_shard = (n_groups + n_shards - 1) // n_shards
    for s in prange(n_shards):
        g0 = min(n_groups, s * groups_per_shard)
        g1 = min(n_groups, g0 + groups_per_shard)
        r0 = g0 * LOSS_GROUP_ROWS
        r1 = min(m, g1 * LOSS_GROUP_ROWS)
        if r1 > r0:
            z = forward(params, offs, dims, acts, X, act_ws, act_off, r0, r1)
            for g in range(g0, g1):  # delta_L written over the logits, group by group
                q0 = g * LOSS_GROUP_ROWS
                q1 = min(m, q0 + LOSS_GROUP_ROWS)
                group_loss[g], group_correct[g] = loss_grad(
                    z[q0 - r0:q1 - r0], T[q0:q1], w[q0:q1], scale, output)
            backward(WT, offs, dims, acts, m, act_ws, act_off, delta_ws, r0, r1)
    for t in prange(grad_block_count(dims)):
        weight_gradient_block(offs, dims, X, act_ws, act_off, delta_ws, grad, t)
    loss = 0.0
    correct = 0
    for g in range(n_groups):  # in row order: same bits for any thread count
        loss += group_loss[g]
        correct += group_correct[g]
    return loss, correct


@pjit
def regularize_and_update(params, grad, seg_lo, seg_hi, seg_decay, l2, state1, state2, kind,
                          lr, momentum, beta1, beta2, eps, l2_parts, apply_update):
    """Take one optimizer step with the L2 term (when ``apply_update``), or
    else add the L2 term to ``grad``.

    Returns (lambda/2) sum ||W||^2 before the step (the L2 part of the loss).
    Each chunk of parameters is handled by one iteration and the L2 parts are
    summed in chunk order, so the thread layout cannot change any sum.
    """
    size = params.shape[0]
    zero = params.dtype.type(0)
    n_chunks = (size + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    for c in prange(n_chunks):
        lo = c * UPDATE_CHUNK
        hi = min(size, lo + UPDATE_CHUNK)
        part = 0.0
        for s in range(seg_lo.shape[0]):
            a = max(lo, seg_lo[s])
            b = min(hi, seg_hi[s])
            if a >= b:
                continue
            decay = l2 if seg_decay[s] else zero
            if decay != zero:
                squares = 0.0
                for i in range(a, b):
                    p = np.float64(params[i])
                    squares += p * p
                part += np.float64(decay) * squares
            if apply_update:
                update_range(params, grad, state1, state2, a, b, kind, lr, momentum,
                             beta1, beta2, eps, decay)
            elif decay != zero:
                for i in range(a, b):
                    grad[i] += decay * params[i]
        l2_parts[c] = part
    l2_loss = 0.0
    for c in range(n_chunks):
        l2_loss += l2_parts[c]
    return 0.5 * l2_loss


@jit
def loss_gradient(params, WT, offs, dims, acts, output, X, T, w, act_ws, act_off, delta_ws,
                  grad, seg_lo, seg_hi, seg_decay, l2, l2_parts, group_loss, group_correct,
                  threads):
    """Loss of the whole batch (X, T, w), with L2, and its gradient in ``grad``.

    The same arithmetic as one training step, without the update: this is what
    the finite-difference tests check.
    """
    weight = 0.0
    for i in range(w.shape[0]):
        weight += np.float64(w[i])
    scale = params.dtype.type(1.0 / weight)
    pack_weights_t(params, offs, dims, WT)
    loss, _ = batch_gradient(params, WT, offs, dims, acts, output, X, T, w, scale,
                             act_ws, act_off, delta_ws, grad, group_loss, group_correct,
                             threads)
    zero = params.dtype.type(0)
    l2_loss = regularize_and_update(params, grad, seg_lo, seg_hi, seg_decay, l2,
                                    params, params, 0, zero, zero, zero, zero, zero,
                                    l2_parts, False)
    return loss / weight + l2_loss


@jit
def train_epoch(params, WT, offs, dims, acts, output, X, T, w, order, batch_size,
                act_ws, act_off, delta_ws, grad, Xb, Tb, wb, seg_lo, seg_hi, seg_decay, l2,
                state1, state2, kind, lr, momentum, beta1, beta2, eps, step, l2_parts,
                group_loss, group_correct, threads):
    """One pass over the rows of X in the order ``order``, in mini-batches.

    Every array is a workspace made once per fit (see trainer.Workspace), so
    nothing is allocated here.  Returns (summed weighted loss, summed weight,
    correct, steps taken, finite).  When a batch's loss is not finite the epoch
    stops *before* that batch's update, so params hold the last finite step.
    """
    n = order.shape[0]
    loss_total = 0.0
    weight_total = 0.0
    correct_total = 0
    steps = 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        batch_weight = 0.0
        for i in range(m):
            src = order[start + i]
            Xb[i, :] = X[src, :]
            Tb[i, :] = T[src, :]
            wb[i] = w[src]
            batch_weight += np.float64(w[src])
        scale = params.dtype.type(1.0 / batch_weight)
        pack_weights_t(params, offs, dims, WT)
        batch_loss, correct = batch_gradient(
            params, WT, offs, dims, acts, output, Xb[:m], Tb[:m], wb[:m], scale,
            act_ws, act_off, delta_ws, grad, group_loss, group_correct, threads)
        correct_total += correct
        if not np.isfinite(batch_loss):
            return loss_total, weight_total, correct_total, steps, False
        step_lr = lr
        if kind == ADAM:
            step_lr = params.dtype.type(adam_step_size(np.float64(lr), np.float64(beta1),
                                                       np.float64(beta2), step + steps + 1))
        l2_loss = regularize_and_update(params, grad, seg_lo, seg_hi, seg_decay, l2,
                                        state1, state2, kind, step_lr, momentum, beta1, beta2,
                                        eps, l2_parts, True)
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
def predict_rows(params, offs, dims, acts, output, X, out, act_ws, act_off, block):
    """Predictions for every row of X into ``out``, blocks of rows in parallel.

    act_ws has one workspace per slot; a row's result does not depend on the
    block it falls in, nor on the number of threads.
    """
    n = X.shape[0]
    slots = act_ws.shape[0]
    n_blocks = (n + block - 1) // block
    for first in range(0, n_blocks, slots):
        last = min(n_blocks, first + slots)
        for bi in prange(last - first):
            r0 = (first + bi) * block
            r1 = min(n, r0 + block)
            predict_block(params, offs, dims, acts, output, X[r0:r1], out[r0:r1],
                          act_ws[bi], act_off)
