"""The compiled training step: forward, loss gradient, backward, update.

A mini-batch of m rows is cut into S shards (S depends only on m and the
trainer's settings, never on the number of threads).  The shards run in
``prange``; each has its own activation workspace and its own gradient buffer.
After the parallel loop the buffers are summed in shard order, so the result
has the same bits with 1 thread or 16.

Flat layout: layer l has W_l (dims[l] x dims[l+1]) at params[offs[l]:], then
its bias b_l.  Activations of shard s, layer l live in act_ws[s, act_off[l]:].
"""
import numpy as np
from numba import prange

from .._jit import jit, pjit
from .activations import IDENTITY, add_bias_activate
from .gemm import (EPI_BIAS_ACT, EPI_DERIV, EPI_STORE, column_sums_acc, gemm_abt, gemm_nn,
                   gemm_tn_acc, pack_transpose, pack_transpose_colsum)
from .losses import loss_grad, output_transform
from .optim import ADAM, adam_step_size, update_range

# Parameters are reduced and updated in chunks of this many elements, one
# chunk per prange iteration: big enough to amortise scheduling, small enough
# to balance two threads on a few-thousand-parameter network.
UPDATE_CHUNK = 8192


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
def forward(params, offs, dims, acts, X, act_ws, act_off):
    """Forward pass of the rows X; returns the logits z_L (a view into act_ws).

    Activations a_l of every layer stay in act_ws for the backward pass.
    """
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    a = X
    for l in range(n_layers):
        W, b = layer_weights(params, offs, dims, l)
        n = dims[l + 1]
        Z = act_ws[act_off[l]:act_off[l] + m * n].reshape((m, n))
        gemm_nn(a, W, Z)
        add_bias_activate(Z, b, acts[l] if l < n_layers - 1 else IDENTITY)
        a = Z
    return a


# Shards of at most this many rows sum their weight gradient row-streaming
# (gemm_tn_acc); larger ones transpose both operands for gemm_abt.  Measured at
# one thread (32 x 784 x 256: 82 vs 36 GFLOP/s; 128 x 1024 x 1024: 60 vs 70).
# A function of the shard's rows only, so it never depends on the thread count.
ROW_STREAM_MAX_ROWS = 96

# Flags passed to gemm_abt as typed int64 values rather than literal constants:
# numba compiles one specialisation per distinct literal argument, and every
# extra copy of the GEMM costs cold-start compile time.
NO_ACC = np.int64(0)


@jit
def pack_weights_t(params, offs, dims, WT):
    """WT_l = W_l^T for every layer, at the same offsets as in ``params``.

    The forward product reads W^T (rows contiguous along the layer's input
    width); packing once per step serves every shard of the batch.
    """
    for l in range(dims.shape[0] - 1):
        k = dims[l]
        n = dims[l + 1]
        W, _ = layer_weights(params, offs, dims, l)
        WT_l = WT[offs[l]:offs[l] + k * n].reshape((n, k))
        pack_transpose(W, WT_l, k, n)


@jit
def forward_packed(params, WT, offs, dims, acts, X, act_ws, act_off):
    """Forward pass of the rows X with the packed GEMM; returns z_L (a view).

    z_l = h(a_{l-1} W_l + b_l): bias and activation are the product's epilogue.
    """
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    a = X
    for l in range(n_layers):
        k = dims[l]
        n = dims[l + 1]
        _, b = layer_weights(params, offs, dims, l)
        WT_l = WT[offs[l]:offs[l] + k * n].reshape((n, k))
        Z = act_ws[act_off[l]:act_off[l] + m * n].reshape((m, n))
        code = acts[l] if l < n_layers - 1 else IDENTITY
        gemm_abt(a, WT_l, Z, k, NO_ACC, np.int64(EPI_BIAS_ACT), code, b, Z)
        a = Z
    return a


@jit
def forward_backward_packed(params, WT, offs, dims, acts, output, X, T, w, scale,
                            act_ws, act_off, delta_ws, tr_ws, grad):
    """Accumulate the gradient of the rows (X, T, w) into ``grad`` (packed GEMM).

    The products are done by gemm_abt: the loss gradient is written over the logits (delta_L in place),
    the bias gradient is summed while delta is packed transposed, and h' is the
    backward product's epilogue.  tr_ws[0] holds a_{l-1}^T, tr_ws[1] delta^T.
    Returns (weighted loss sum, correct predictions).
    """
    n_layers = dims.shape[0] - 1
    m = X.shape[0]
    delta = forward_packed(params, WT, offs, dims, acts, X, act_ws, act_off)
    loss, correct = loss_grad(delta, T, w, scale, output)  # delta_L, in place
    for l in range(n_layers - 1, -1, -1):
        k = dims[l]
        n = dims[l + 1]
        if l == 0:
            a_in = X
        else:
            a_in = act_ws[act_off[l - 1]:act_off[l - 1] + m * k].reshape((m, k))
        gW, gb = layer_weights(grad, offs, dims, l)
        # dL/db_l += sum_i delta_l[i, :]  and  dL/dW_l += a_{l-1}^T delta_l
        if m <= ROW_STREAM_MAX_ROWS:
            column_sums_acc(delta, gb)
            gemm_tn_acc(a_in, delta, gW)
        else:
            aT = tr_ws[0, :k * m].reshape((k, m))
            dT = tr_ws[1, :n * m].reshape((n, m))
            pack_transpose(a_in, aT, m, k)
            pack_transpose_colsum(delta, dT, m, n, gb)
            gemm_abt(aT, dT, gW, m, np.int64(1), np.int64(EPI_STORE), np.int64(IDENTITY),
                     gb, gW)
        if l > 0:
            W, _ = layer_weights(params, offs, dims, l)
            nxt = delta_ws[(n_layers - 1 - l) % 2, :m * k].reshape((m, k))
            # delta_{l-1} = (delta_l W_l^T) * h'(a_{l-1}), h' in the epilogue
            gemm_abt(delta, W, nxt, n, NO_ACC, np.int64(EPI_DERIV), acts[l - 1], gb, a_in)
            delta = nxt
    return loss, correct


@jit
def shard_count(m, max_shards, min_rows):
    """Shards for a batch of m rows: a function of m only, for reproducibility."""
    return max(1, min(max_shards, (m + min_rows - 1) // min_rows))


@pjit
def reduce_and_update(params, grads, n_shards, seg_lo, seg_hi, seg_decay, l2,
                      state1, state2, kind, lr, momentum, beta1, beta2, eps, l2_parts,
                      apply_update):
    """Sum the shard gradients in order into grads[0], add L2, and (when
    ``apply_update``) take one optimizer step.

    Returns (lambda/2) sum ||W||^2 before the step (the L2 part of the loss).
    Each chunk of parameters is summed and updated by one iteration, so the
    thread layout cannot change the order of any floating-point sum.
    """
    size = params.shape[0]
    n_chunks = (size + UPDATE_CHUNK - 1) // UPDATE_CHUNK
    total = grads[0]
    for c in prange(n_chunks):
        lo = c * UPDATE_CHUNK
        hi = min(size, lo + UPDATE_CHUNK)
        part = 0.0
        for s in range(seg_lo.shape[0]):
            a = max(lo, seg_lo[s])
            b = min(hi, seg_hi[s])
            decay = l2 if seg_decay[s] else params.dtype.type(0)
            for i in range(a, b):
                g = total[i]
                for sh in range(1, n_shards):
                    g += grads[sh, i]
                p = params[i]
                total[i] = g + decay * p
                part += np.float64(decay) * np.float64(p) * np.float64(p)
        l2_parts[c] = part
        if apply_update:
            update_range(params, total, state1, state2, lo, hi, kind, lr, momentum,
                         beta1, beta2, eps)
    l2_loss = 0.0
    for c in range(n_chunks):
        l2_loss += l2_parts[c]
    return 0.5 * l2_loss


@pjit
def shard_gradients(params, WT, offs, dims, acts, output, X, T, w, scale, max_shards, min_rows,
                    act_ws, act_off, delta_ws, tr_ws, grads, shard_loss, shard_correct):
    """Gradients of the batch (X, T, w), one buffer per shard, shards in prange.

    Returns (number of shards used, summed weighted loss, correct rows); the
    per-shard gradients are left in grads[:n_shards] for reduce_and_update.
    """
    m = X.shape[0]
    zero = params.dtype.type(0)
    n_shards = shard_count(m, max_shards, min_rows)
    rows = (m + n_shards - 1) // n_shards
    for s in prange(n_shards):
        shard_loss[s] = 0.0
        shard_correct[s] = 0
        g = grads[s]
        for i in range(g.shape[0]):
            g[i] = zero
        r0 = min(m, s * rows)
        r1 = min(m, r0 + rows)
        if r1 > r0:
            loss_s, correct_s = forward_backward_packed(
                params, WT, offs, dims, acts, output, X[r0:r1], T[r0:r1], w[r0:r1],
                scale, act_ws[s], act_off, delta_ws[s], tr_ws[s], g)
            shard_loss[s] = loss_s
            shard_correct[s] = correct_s
    loss = 0.0
    correct = 0
    for s in range(n_shards):  # in shard order: same bits for any thread count
        loss += shard_loss[s]
        correct += shard_correct[s]
    return n_shards, loss, correct


@jit
def loss_gradient(params, WT, offs, dims, acts, output, X, T, w, max_shards, min_rows,
                  act_ws, act_off, delta_ws, tr_ws, grads, seg_lo, seg_hi, seg_decay, l2,
                  l2_parts, shard_loss, shard_correct):
    """Loss of the whole batch (X, T, w), with L2, and its gradient in grads[0].

    The same arithmetic as one training step, without the update: this is what
    the finite-difference tests check.
    """
    weight = 0.0
    for i in range(w.shape[0]):
        weight += np.float64(w[i])
    scale = params.dtype.type(1.0 / weight)
    pack_weights_t(params, offs, dims, WT)
    n_shards, loss, _ = shard_gradients(params, WT, offs, dims, acts, output, X, T, w, scale,
                                        max_shards, min_rows, act_ws, act_off, delta_ws,
                                        tr_ws, grads, shard_loss, shard_correct)
    l2_loss = reduce_and_update(params, grads, n_shards, seg_lo, seg_hi, seg_decay, l2,
                                params, params, 0, params.dtype.type(0), params.dtype.type(0),
                                params.dtype.type(0), params.dtype.type(0), params.dtype.type(0),
                                l2_parts, False)
    return loss / weight + l2_loss


@jit
def train_epoch(params, WT, offs, dims, acts, output, X, T, w, order, batch_size,
                max_shards, min_rows, act_ws, act_off, delta_ws, tr_ws, grads,
                Xb, Tb, wb, seg_lo, seg_hi, seg_decay, l2,
                state1, state2, kind, lr, momentum, beta1, beta2, eps, step, l2_parts,
                shard_loss, shard_correct):
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
        n_shards, batch_loss, correct = shard_gradients(
            params, WT, offs, dims, acts, output, Xb[:m], Tb[:m], wb[:m], scale, max_shards,
            min_rows, act_ws, act_off, delta_ws, tr_ws, grads, shard_loss, shard_correct)
        correct_total += correct
        if not np.isfinite(batch_loss):
            return loss_total, weight_total, correct_total, steps, False
        step_lr = lr
        if kind == ADAM:
            step_lr = params.dtype.type(adam_step_size(np.float64(lr), np.float64(beta1),
                                                       np.float64(beta2), step + steps + 1))
        l2_loss = reduce_and_update(params, grads, n_shards, seg_lo, seg_hi, seg_decay, l2,
                                    state1, state2, kind, step_lr, momentum, beta1, beta2, eps,
                                    l2_parts, True)
        steps += 1
        loss_total += batch_loss + l2_loss * batch_weight
        weight_total += batch_weight
    return loss_total, weight_total, correct_total, steps, True


@pjit
def predict_rows(params, offs, dims, acts, output, X, out, act_ws, act_off, block):
    """Predictions for every row of X into ``out``, blocks of rows in parallel.

    act_ws has one workspace per slot; rows are processed in fixed blocks so the
    bits of a prediction do not depend on the number of threads.
    """
    n = X.shape[0]
    n_layers = dims.shape[0] - 1
    n_out = dims[n_layers]
    slots = act_ws.shape[0]
    n_blocks = (n + block - 1) // block
    for first in range(0, n_blocks, slots):
        last = min(n_blocks, first + slots)
        for bi in prange(last - first):
            r0 = (first + bi) * block
            r1 = min(n, r0 + block)
            z = forward(params, offs, dims, acts, X[r0:r1], act_ws[bi], act_off)
            output_transform(z, output)
            for i in range(r1 - r0):
                for j in range(n_out):
                    out[r0 + i, j] = z[i, j]
