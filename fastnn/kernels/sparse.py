"""The training step and prediction for sparse (CSR) input: a sparse first layer.

Only the first layer sees X.  Its two products run on the CSR rows directly,
never on a dense copy of X or of a batch:

    forward   z_0 = X_b W_0       row i: sum over the stored (j, v) of row i of v W_0[j, :]
    gradient  dW_0 = X_b^T delta_0   row j: sum over the batch rows r with X[r, j] = v
                                     stored of v delta_0[r, :]

(no delta W_0^T: there is no gradient with respect to X).  Every other layer,
the loss gradient, the backward pass from the output down to delta_0, the L2
term and the optimizer update are the dense step's own functions
(kernels.step), on the same workspace (trainer.make_workspace, with a batch
matrix Xb of zero columns: the dense gather is not used).

The same two parallel passes per step as the dense step:

1. rows: one shard of loss groups per thread; the shard runs its rows
   through the sparse first layer (reading them from X's CSR arrays through
   the batch's row order), the dense layers, the loss gradient and backward;
2. weights: the blocks of kernels.step.weight_block; a block of the first
   layer computes its rows of dW_0 from the batch's
   transpose, the others are kernels.step.weights_block; each block is then
   updated by kernels.step.update_rows.

Prediction is the rows pass without the loss and backward (phase PREDICT of
the same compiled pass: a second parallel function would cost seconds more
of first-use compile time).

The batch's transpose (its stored values grouped by column, in batch-row
order inside a column: a stable counting sort, ``batch_transpose``) is made
once per step, on the calling thread, between the passes.  Determinism: a
row of z_0 sums its stored values in column order (CSR indices are sorted),
a row of dW_0 sums over the batch rows in batch order, both with one
multiply-add per term on the calling thread of the block; which thread runs
which shard or block changes no bits.  These are the orders the dense GEMM
uses on the densified data (a zero entry adds an exact 0 there), so the sparse
and dense steps agree to rounding (in practice, to the bit).

CSR arrays: ``data`` in the network's dtype, ``indices`` int32 (column
indices, sorted within each row, no duplicates), ``indptr`` int64
(fastnn.sparse makes them).
"""
from collections import namedtuple

import numpy as np
from numba import prange

from .._jit import jit, pjit
from .activations import bias_activate_row
from .gemm import vector_lanes
from .losses import loss_grad, output_transform
from .step import (FIRST, LOSS_GROUP_ROWS, NO_ACTIVATION, ROWS, WEIGHTS, backward,
                   batch_weight, bias_gradient, forward_from, gradient_only,
                   gradient_rows_buffer, layer_delta, layer_rows, layer_weights, no_panels,
                   pack_deltas, pack_weights_t, update_for_step, update_rows, weight_block,
                   weight_block_count, weights_block)

SECOND = np.int64(1)   # layer index 1, typed (a literal compiles another forward_from)

CSR = namedtuple("CSR", ["data", "indices", "indptr"])
"""X in compressed sparse rows (see the module notes for the dtypes)."""
SparseBatch = namedtuple("SparseBatch", ["data", "indices", "indptr", "T", "w", "order",
                                         "scale"])
"""One mini-batch: rows ``order`` of (X, T, w), X as its three CSR arrays (flat:
numba's parallel loops cannot take a tuple nested in a bundle), and 1 / (sum
of the weights)."""
SparseWork = namedtuple("SparseWork", ["col_ptr", "col_fill", "t_rows", "t_vals"])
"""The batch's transpose: col_ptr (n_features + 1), col_fill (n_features),
t_rows / t_vals (capacity: the most stored values a batch can hold)."""


@jit(refcount=False)
def sparse_rows_forward(W, b, code, X, rows, Z):
    """Z[i] = h(X[rows[i]] W + b) for every i: the sparse first layer's forward.

    X is a CSR bundle, W (k x n) dense, Z (len(rows) x n) rows contiguous.
    The stored values of a row are added in column order, one multiply-add
    per term into the row of Z (contiguous: LLVM vectorises it).
    """
    n = Z.shape[1]
    zero = Z.dtype.type(0)
    data, indices, indptr = X.data, X.indices, X.indptr
    # W[c, j] and Z[i, j], not the row views W[c] or Z[i]: numba counts the
    # references of each view with two atomic calls, two per stored value
    # (not measurable at 50k features, where reading W's rows from memory
    # dominates, but pure overhead for narrow, cache-resident W)
    for i in range(rows.shape[0]):
        src = rows[i]
        for j in range(n):
            Z[i, j] = zero
        for p in range(indptr[src], indptr[src + 1]):
            v = data[p]
            c = indices[p]
            for j in range(n):
                Z[i, j] += v * W[c, j]
        bias_activate_row(Z[i], b, code)


@jit
def sparse_forward(net, X, rows, m, act_ws, act_off, r0, r1, pack):
    """The whole forward pass of rows r0:r1 of a batch of m rows, batch row i
    being X[rows[i]]; returns those rows of the logits z_L."""
    n_layers = net.dims.shape[0] - 1
    W, b = layer_weights(net.params, net.offs, net.dims, 0)
    code = net.acts[0] if n_layers > 1 else NO_ACTIVATION
    Z0 = layer_rows(act_ws, act_off[0], m, net.dims[1])
    sparse_rows_forward(W, b, code, X, rows[r0:r1], Z0[r0:r1])
    # layers 1.. as the dense step does them, from a_0 in act_ws
    return forward_from(net, SECOND, Z0[r0:r1], m, act_ws, act_off, r0, r1, pack,
                        no_panels(net))


@jit(refcount=False)
def gather_targets(batch, work, r0, r1):
    """Rows r0:r1 of the batch's targets and weights (X is read in place)."""
    T, w, order = batch.T, batch.w, batch.order
    for i in range(r0, r1):
        src = order[i]
        for j in range(T.shape[1]):
            work.Tb[i, j] = T[src, j]
        work.wb[i] = w[src]


@jit(refcount=False)
def sparse_shard_rows(net, batch, work, g0, g1, phase, s):
    """Loss groups g0:g1 of the batch, on worker s: forward (sparse first
    layer), loss gradient over the logits group by group, backward down to
    delta_0; with phase PREDICT only the forward and the output transform
    (predictions left over the logits in work.act_ws)."""
    m = batch.order.shape[0]
    r0 = g0 * LOSS_GROUP_ROWS
    r1 = min(m, g1 * LOSS_GROUP_ROWS)
    if r1 <= r0:
        return
    X = CSR(batch.data, batch.indices, batch.indptr)
    if phase == PREDICT:
        z = sparse_forward(net, X, batch.order, m, work.act_ws, work.act_off, r0, r1,
                           work.pack[s])
        output_transform(z, net.output)
        return
    gather_targets(batch, work, r0, r1)
    z = sparse_forward(net, X, batch.order, m, work.act_ws, work.act_off, r0, r1,
                       work.pack[s])
    for g in range(g0, g1):
        q0 = g * LOSS_GROUP_ROWS
        q1 = min(m, q0 + LOSS_GROUP_ROWS)
        work.group_loss[g], work.group_correct[g] = loss_grad(
            z[q0 - r0:q1 - r0], work.Tb[q0:q1], work.wb[q0:q1], batch.scale, net.output)
    backward(work.WT, net.offs, net.dims, net.acts, m, work.act_ws, work.act_off,
             work.delta_ws, r0, r1, work.pack[s])
    pack_deltas(net, work, m, r0, r1, SECOND)   # (layer 0's dW: the sparse transpose)


@jit(refcount=False)
def batch_transpose(X, order, sw):
    """The batch X[order] grouped by column into sw: for column j its stored
    values sw.t_vals[col_ptr[j]:col_ptr[j + 1]] and their batch rows sw.t_rows,
    rows in increasing order (a stable counting sort: two passes over the
    batch's stored values, one over the columns)."""
    data, indices, indptr = X.data, X.indices, X.indptr
    col_ptr, fill = sw.col_ptr, sw.col_fill
    n_cols = fill.shape[0]
    for j in range(n_cols + 1):
        col_ptr[j] = 0
    for i in range(order.shape[0]):
        src = order[i]
        for p in range(indptr[src], indptr[src + 1]):
            col_ptr[indices[p] + 1] += 1
    for j in range(n_cols):
        col_ptr[j + 1] += col_ptr[j]
        fill[j] = col_ptr[j]
    for i in range(order.shape[0]):
        src = order[i]
        for p in range(indptr[src], indptr[src + 1]):
            c = indices[p]
            q = fill[c]
            sw.t_rows[q] = i
            sw.t_vals[q] = data[p]
            fill[c] = q + 1


@jit(refcount=False)
def sparse_weight_rows(sw, delta, i0, i1, dW):
    """dW = rows i0:i1 of X_b^T delta from the batch's transpose: row j is the
    sum over column j's stored values v (batch row r) of v delta[r, :], in
    batch-row order."""
    n = dW.shape[1]
    zero = dW.dtype.type(0)
    col_ptr, t_rows, t_vals = sw.col_ptr, sw.t_rows, sw.t_vals
    for j in range(i0, i1):   # (2-D indexing, no row views: see sparse_rows_forward)
        row = j - i0
        for c in range(n):
            dW[row, c] = zero
        for q in range(col_ptr[j], col_ptr[j + 1]):
            v = t_vals[q]
            r = t_rows[q]
            for c in range(n):
                dW[row, c] += v * delta[r, c]


@jit(refcount=False)
def sparse_weights_block(net, work, sw, update, m, t, s):
    """Block t of the weights pass on worker s: a block of the first layer
    from the sparse transpose, any other the dense step's weights_block."""
    l, i0, i1 = weight_block(net.dims, t, vector_lanes(net.params))
    if l > 0:
        weights_block(net, work, update, m, t, s)
        return
    n = net.dims[1]
    g_rows = gradient_rows_buffer(net, work, update, FIRST, i0, i1, s)
    delta = layer_delta(net, work, m, FIRST)
    sparse_weight_rows(sw, delta, i0, i1, g_rows.reshape((i1 - i0, n)))
    if i0 == 0:
        bias_gradient(net, work, FIRST, delta)
    work.l2_parts[t] = update_rows(net, work, update, FIRST, i0, i1, g_rows)


# Phases of sparse_step_pass: kernels.step's ROWS and WEIGHTS, and PREDICT
# (the rows' forward pass alone: prediction shares the step's compiled pass,
# since every function with a prange costs seconds of first-use compile time)
PREDICT = np.int64(2)


@pjit
def sparse_step_pass(phase, net, batch, work, sw, update, threads):
    """One parallel pass of a sparse training step (kernels.step.step_pass
    with the sparse first layer): ROWS returns (summed weighted loss, correct
    rows), WEIGHTS ((lambda/2) sum W^2 before the step, 0); WEIGHTS needs the
    batch's transpose in ``sw`` (batch_transpose).  PREDICT: the network's
    outputs for the batch rows over its logits in work.act_ws (T, w, sw and
    update unused), returns (0, 0).  The same cut into shards and blocks, the
    same fixed-order sums: same bits for any thread count."""
    m = batch.order.shape[0]
    n_groups = (m + LOSS_GROUP_ROWS - 1) // LOSS_GROUP_ROWS
    n_tasks = (weight_block_count(net.dims, vector_lanes(net.params)) if phase == WEIGHTS
               else n_groups)
    workers = max(1, min(threads, n_tasks, work.scratch.shape[0]))
    per_worker = (n_groups + workers - 1) // workers
    if workers == 1:
        # the same calls on this thread, without a parallel region (which
        # wakes numba's whole pool even for one iteration): what lets a
        # serial call run with threads=1 and numba's thread count untouched
        # (_parallel.parallel_region)
        if phase != WEIGHTS:
            sparse_shard_rows(net, batch, work, FIRST, n_groups, phase, FIRST)
        else:
            for t in range(n_tasks):
                sparse_weights_block(net, work, sw, update, m, np.int64(t), FIRST)
    else:
        for s in prange(workers):
            if phase != WEIGHTS:
                g0 = min(n_groups, s * per_worker)
                sparse_shard_rows(net, batch, work, g0, min(n_groups, g0 + per_worker),
                                  phase, np.int64(s))
            else:
                for t in range(s, n_tasks, workers):
                    sparse_weights_block(net, work, sw, update, m, t, np.int64(s))
    total = 0.0
    correct = 0
    if phase == ROWS:
        for g in range(n_groups):  # in row order
            total += work.group_loss[g]
            correct += work.group_correct[g]
    elif phase == WEIGHTS:   # (PREDICT: nothing to sum)
        for t in range(n_tasks):
            total += work.l2_parts[t]
        total *= 0.5
    return total, correct


@jit(refcount=False)
def sparse_train_epoch(net, X, T, w, order, batch_size, work, sw, update, step, threads):
    """kernels.step.train_epoch for X in CSR: one pass over the rows in the
    order ``order``, in mini-batches; returns (summed weighted loss, summed
    weight, correct, steps taken, finite), stopping before the update of a
    batch whose loss is not finite."""
    n = order.shape[0]
    loss_total = 0.0
    weight_total = 0.0
    correct_total = 0
    steps = 0
    pack_weights_t(net.params, net.offs, net.dims, work.WT)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        rows = order[start:start + m]
        weight = batch_weight(w, rows)
        batch = SparseBatch(X.data, X.indices, X.indptr, T, w, rows,
                            net.params.dtype.type(1.0 / weight))
        batch_loss, correct = sparse_step_pass(ROWS, net, batch, work, sw, update, threads)
        correct_total += correct
        if not np.isfinite(batch_loss):
            return loss_total, weight_total, correct_total, steps, False
        this_step = update_for_step(update, step + steps + 1)
        batch_transpose(X, rows, sw)
        l2_loss, _ = sparse_step_pass(WEIGHTS, net, batch, work, sw, this_step, threads)
        steps += 1
        loss_total += batch_loss + l2_loss * weight
        weight_total += weight
    return loss_total, weight_total, correct_total, steps, True


@jit(refcount=False)
def sparse_loss_gradient(net, X, T, w, order, work, sw, l2, threads):
    """Loss of the rows ``order`` of (X, T, w) as one batch, with L2, and its
    gradient in work.grad (kernels.step.loss_gradient for CSR input)."""
    weight = batch_weight(w, order)
    pack_weights_t(net.params, net.offs, net.dims, work.WT)
    batch = SparseBatch(X.data, X.indices, X.indptr, T, w, order,
                        net.params.dtype.type(1.0 / weight))
    update = gradient_only(net.params, l2)
    loss, _ = sparse_step_pass(ROWS, net, batch, work, sw, update, threads)
    batch_transpose(X, order, sw)
    l2_loss, _ = sparse_step_pass(WEIGHTS, net, batch, work, sw, update, threads)
    return loss / weight + l2_loss


# The two products alone (tests, benchmarks)
@jit
def product_sparse_forward(X, W, b, code, Z):
    """Z = h(X W + b) for every row of X (CSR bundle)."""
    rows = np.arange(Z.shape[0])
    sparse_rows_forward(W, b, code, X, rows, Z)


@jit
def product_sparse_weight_grad(X, delta, sw, dW):
    """dW = X^T delta (all rows of X, in order), through the transpose in sw."""
    rows = np.arange(delta.shape[0])
    batch_transpose(X, rows, sw)
    sparse_weight_rows(sw, delta, FIRST, dW.shape[0], dW)
