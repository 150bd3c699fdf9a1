"""The compiled training step: forward, loss gradient, backward, update.

A step is two parallel passes, each writing disjoint memory:

1. rows (``step_pass(ROWS, ...)``): the batch is cut into one shard per thread; each
   shard runs its rows forward, writes the loss gradient over its logits and
   runs its rows backward (delta_l for every layer);
2. weights (``step_pass(WEIGHTS, ...)``): dW_l = a_{l-1}^T delta_l over the whole batch
   in blocks of rows of dW_l (block_rows: a cut that depends only on the
   layer sizes and the dtype's vector width), db_l = column sums of delta_l
   with the first block, then, in the same task while the block is in
   cache, the L2 term, the optimizer update of those rows of W_l (and of
   b_l) and their W^T for the next step's backward product.

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
from collections import namedtuple

import numba
import numpy as np
from numba import prange, types

from .._jit import jit, pjit
from .activations import IDENTITY
from .gemm import (EPI_BIAS_ACT, EPI_DERIV, EPI_STORE, column_sums_acc, dot_product_elements,
                   gemm, pack_b_rows, pack_elements, pack_transpose, packed_b_elements,
                   panel_columns, vector_lanes)
from .microkernel import lanes
from .losses import loss_grad, output_transform
from .optim import ADAM, SGD, adam_step_size, update_range
from .shared import SharedFunction, calls_by_symbol

# The loss is summed over groups of this many rows, then over the groups in
# order; shards of the batch start at multiples of it.
LOSS_GROUP_ROWS = 16
# Rows of dW (and of W) per block of the weights pass: a multiple of the
# register tile's rows; 784 inputs give 9 blocks, enough to balance a few threads.
GRAD_BLOCK_ROWS = 96
# The same for a layer whose weight gradient is computed transposed (fewer
# outputs than a vector has lanes: weight_gradient_rows), where a block's
# rows are the product's columns: a multiple of every panel width (64, 32,
# 16 or 8 columns), so no panel is left partly empty.  With 96 rows each
# block was one full panel and a half-empty one, and 100 inputs two blocks
# (96 and 4 rows).  The weight gradient's GFLOP/s, 96 -> 128 rows (python -m
# fastnn.bench.products, alternated, rocketlake): 128 x 256 x 10 58-63 ->
# 80-86, 300 x 100 x 3 24-27 -> 32-36, 16 x 128 x 10 17-18 -> 22-23.
FEW_OUTPUTS_BLOCK_ROWS = 128
# The most rows a block has (workspaces are sized for it)
MAX_BLOCK_ROWS = max(GRAD_BLOCK_ROWS, FEW_OUTPUTS_BLOCK_ROWS)

# The arguments of the compiled step travel in four bundles (namedtuples):
Net = namedtuple("Net", ["params", "offs", "dims", "acts", "output"])
"""The network: flat parameters, layer offsets and sizes, activation codes, output code."""
Work = namedtuple("Work", ["WT", "act_ws", "act_off", "delta_ws", "grad", "scratch", "pack",
                           "Xb", "Tb", "wb", "group_loss", "group_correct", "l2_parts",
                           "dpack", "dpack_off"])
"""The workspace of a fit (trainer.make_workspace makes it once); ``dpack``
and ``dpack_off``: the deltas packed for the weights pass (delta_pack_layout)."""
Batch = namedtuple("Batch", ["X", "T", "w", "order", "scale"])
"""One mini-batch: rows ``order`` of (X, T, w), and 1 / (sum of their weights)."""
Update = namedtuple("Update", ["state1", "state2", "kind", "l2", "lr", "momentum", "beta1",
                               "beta2", "eps", "apply", "keep", "kept", "keep_now",
                               "zero_state"])
"""Optimizer state and settings (flat: numba's parallel loops cannot take a
tuple nested in a bundle).  ``keep`` (3 x n_params), ``kept`` (1 int64) and
``keep_now``: with keep_now, the step's update first copies the parameters
and the optimizer buffers it writes into the rows of ``keep``, block by block
as it reaches them (while they are in cache), and train_epoch sets kept[0] = 1
once a whole step has done so: a transaction's rollback point taken without a
pass of its own (trainer.Trainer.transaction).  ``zero_state`` (only with
keep_now): those buffers are then zeroed, block by block, before the update
reads them: a new optimizer's zero state (Trainer.reset_optimizer) without a
pass of its own either."""

_NO_KEEP = {}


def no_keep(dtype):
    """(keep, kept) of an Update bundle whose steps keep nothing (keep_now
    False, so never written): an empty matrix of ``dtype`` and a mark, made
    once per dtype, so building a bundle allocates nothing."""
    dtype = np.dtype(dtype)
    if dtype not in _NO_KEEP:
        _NO_KEEP[dtype] = (np.empty((0, 0), dtype), np.zeros(1, np.int64))
    return _NO_KEEP[dtype]


def bundle_types(dtype):
    """The numba types of the bundles (Net, Batch, Work, Update) for a
    network of ``dtype``, as trainer.make_workspace, the trainer and
    train_epoch build them: the signatures of the step's shared functions."""
    f = numba.from_dtype(np.dtype(dtype))
    vector, matrix = types.Array(f, 1, "C"), types.Array(f, 2, "C")
    ints, float64s = types.Array(types.int64, 1, "C"), types.Array(types.float64, 1, "C")
    net = types.NamedTuple([vector, ints, ints, ints, types.int64], Net)
    batch = types.NamedTuple([matrix, matrix, vector, ints, f], Batch)
    work = types.NamedTuple([vector, vector, ints, vector, vector, matrix, matrix, matrix, matrix,
                             vector, float64s, ints, float64s, vector, ints], Work)
    update = types.NamedTuple([vector, vector, types.int64, f, f, f, f, f, f, types.boolean,
                               matrix, ints, types.boolean, types.boolean], Update)
    return net, batch, work, update


def pack_workspace_elements(dims, itemsize):
    """Elements of one thread's GEMM pack workspace (gemm's ``pack``) for a
    network of layer sizes ``dims``: enough for every product of its step
    and prediction, whose C has at most max(widest layer after the input,
    MAX_BLOCK_ROWS) columns (forward: a layer's outputs; backward: a hidden
    layer's width; weight gradient: a layer's outputs, or a block's rows when
    computed transposed), and for B^T of the products gemm computes as dot
    products (a C of a few columns: any K, so a layer of thousands of inputs
    before a single output still allocates nothing per step)."""
    dims = [int(d) for d in dims]
    tiles = pack_elements(max(max(dims[1:]), MAX_BLOCK_ROWS), itemsize)
    # forward (K = a layer's inputs, N = its outputs) and backward (K = its
    # outputs, N = its inputs), both ways for every layer
    pairs = list(zip(dims[:-1], dims[1:])) + list(zip(dims[1:], dims[:-1]))
    return max([tiles] + [dot_product_elements(k, n, itemsize) for k, n in pairs])


def _packed_regions(shapes, dtype):
    """A buffer holding, for each layer, a matrix of shape ``shapes[l]``
    (k, n) packed as gemm's packed_b (panels of NR columns, k rows each), or
    nothing where ``shapes[l]`` is None; returns (buffer, offsets), offset -1
    for a layer with nothing.  Regions start on 64-byte boundaries (whole
    vectors per cache line)."""
    dtype = np.dtype(dtype)
    offsets = np.full(len(shapes), -1, dtype=np.int64)
    total = 0
    for l, shape in enumerate(shapes):
        if shape is not None:
            offsets[l] = total
            total += packed_b_elements(shape[0], shape[1], dtype.itemsize)
            total += -total % (64 // dtype.itemsize)
    slack = 64 // dtype.itemsize
    buffer = np.empty(total + slack, dtype=dtype)
    shift = (-buffer.ctypes.data % 64) // dtype.itemsize
    offsets[offsets >= 0] += shift
    return buffer, offsets


def delta_pack_layout(dims, batch_size, dtype):
    """(dpack, dpack_off) of a Work bundle: a buffer for the deltas of a batch
    of up to ``batch_size`` rows packed as B's panels of the weight gradient
    a^T delta (gemm's packed_b), and where layer l's starts (-1: not packed).

    The weights pass computes dW_l in blocks of GRAD_BLOCK_ROWS rows, and
    each block's product would pack all of delta_l again (784 x 512 x 1024
    in blocks: 1.10-1.13x the time of one product, znver3); so the rows pass
    packs each delta_l once, each shard its own rows (pack_deltas), for the
    layers with more than one block that compute a^T delta as such (not
    transposed: weight_gradient_rows)."""
    dims = [int(d) for d in dims]
    lanes_ = lanes(np.dtype(dtype).itemsize)
    return _packed_regions([(batch_size, n) if n >= lanes_ and k > GRAD_BLOCK_ROWS else None
                            for k, n in zip(dims[:-1], dims[1:])], dtype)


def weight_pack_layout(dims, dtype):
    """(wpack, wpack_off): a buffer for every W_l packed as B's panels of the
    forward product a W_l (gemm's packed_b), and where layer l's starts.
    A prediction of several blocks of rows packs each W_l into it once
    (pack_weights), where each block's products would pack it again (about
    35 us for 784 x 256 float32, 5 % of a 132-row block's product, znver3)."""
    dims = [int(d) for d in dims]
    return _packed_regions(list(zip(dims[:-1], dims[1:])), dtype)


# Flags passed to gemm as typed int64 values rather than literal constants:
# numba compiles one specialisation per distinct literal argument, and every
# extra copy of the GEMM costs cold-start compile time.
NO_ACC = np.int64(0)
STORE = np.int64(EPI_STORE)
BIAS_ACT = np.int64(EPI_BIAS_ACT)
DERIV = np.int64(EPI_DERIV)
NO_ACTIVATION = np.int64(IDENTITY)
FIRST = np.int64(0)   # index 0, typed (a literal 0 compiles another update_range)


@jit(inline="always")
def layer_weights(params, offs, dims, l):
    """Views (W_l, b_l) into the flat buffer ``params``."""
    k = dims[l]
    n = dims[l + 1]
    start = offs[l]
    W = params[start:start + k * n].reshape((k, n))
    b = params[start + k * n:start + k * n + n]
    return W, b


@jit(inline="always")
def layer_rows(ws, off, m, n):
    """The (m x n) matrix of a layer stored at ws[off:] (activations or deltas)."""
    return ws[off:off + m * n].reshape((m, n))


@jit(inline="always")
def _panels(buf, off, k, n):
    """The k x n matrix packed at buf[off:] as gemm's packed_b (panel q in
    rows q k..), or an empty one (nothing packed: gemm reads B itself) for
    off < 0."""
    nr = panel_columns(buf)
    if off < 0:
        return buf[:0].reshape((0, nr))
    rows = k * ((n + nr - 1) // nr)
    return buf[off:off + rows * nr].reshape((rows, nr))


@jit(inline="always")
def weight_panels(net, wp, l):
    """W_l as packed into ``wp`` = (wpack, wpack_off) by pack_weights, or an
    empty matrix when wp holds no layout (no_panels: gemm packs W_l itself)."""
    wpack, wpack_off = wp
    off = wpack_off[l] if l < wpack_off.shape[0] else -1
    return _panels(wpack, off, net.dims[l], net.dims[l + 1])


@jit(inline="always")
def no_panels(net):
    """A ``wp`` argument of forward with no packed weights."""
    return net.params[:0], net.offs[:0]


@jit(inline="always")
def pack_weights(net, wp):
    """Every W_l that ``wp`` has room for packed into it (weight_pack_layout),
    for the forward products to read as packed_b."""
    for l in range(net.dims.shape[0] - 1):
        panels = weight_panels(net, wp, l)
        if panels.shape[0] > 0:
            W, _ = layer_weights(net.params, net.offs, net.dims, l)
            pack_b_rows(W, FIRST, net.dims[l], panels)


@jit(inline="always")
def forward(net, X, act_ws, act_off, r0, r1, pack, wp):
    """Forward pass of rows r0:r1 of X; returns those rows of the logits z_L.
    ``pack``: the calling thread's GEMM pack workspace; ``wp``: the weights
    packed ahead (pack_weights), or no_panels.

    Training and prediction share this function; a row's result does not
    depend on the other rows.
    """
    return forward_from(net, FIRST, X[r0:r1], X.shape[0], act_ws, act_off, r0, r1, pack, wp)


@jit(inline="always")
def forward_from(net, first, a, m, act_ws, act_off, r0, r1, pack, wp):
    """Layers first.. of the forward pass of rows r0:r1 of a batch of m rows,
    from ``a``, those rows of the layers' input (X, or a_{first-1}); returns
    those rows of the logits z_L (``a`` itself when no layer is left).
    (The sparse step computes layer 0 itself and starts here at layer 1.)"""
    n_layers = net.dims.shape[0] - 1
    if first >= n_layers:
        return a
    wpack, wpack_off = wp
    forward_layers(net, first, a, m, act_ws, act_off, r0, r1, pack, wpack, wpack_off)
    return layer_rows(act_ws, act_off[n_layers - 1], m, net.dims[n_layers])[r0:r1]


@jit(refcount=False)
def forward_layers_kernel(net, first, a, m, act_ws, act_off, r0, r1, pack, wpack, wpack_off):
    """The layers of forward_from, each output a_l into act_ws.

    z_l = h(a_{l-1} W_l + b_l): W_l is read in place (or packed ahead, from
    (wpack, wpack_off): the same bits), bias and activation are the
    product's epilogue, and a_l stays in act_ws for the backward pass.
    """
    dims = net.dims
    n_layers = dims.shape[0] - 1
    wp = (wpack, wpack_off)
    for l in range(first, n_layers):
        W, b = layer_weights(net.params, net.offs, dims, l)
        Z = layer_rows(act_ws, act_off[l], m, dims[l + 1])[r0:r1]
        code = net.acts[l] if l < n_layers - 1 else NO_ACTIVATION
        gemm(a, W, Z, NO_ACC, BIAS_ACT, code, b, Z, pack, weight_panels(net, wp, l))
        a = Z


def _forward_layers_signature(dtype):
    net = bundle_types(dtype)[0]
    f = numba.from_dtype(np.dtype(dtype))
    vector, matrix = types.Array(f, 1, "C"), types.Array(f, 2, "C")
    ints = types.Array(types.int64, 1, "C")
    i64 = types.int64
    return (net, i64, matrix, i64, vector, ints, i64, i64, vector, vector, ints)


# The forward pass, compiled once per dtype and called by symbol from the
# training step's shards, the sparse step and the prediction (inlined, each
# typed, lowered and optimised it anew in a cold first run).
FORWARD_LAYERS = SharedFunction(forward_layers_kernel, _forward_layers_signature,
                                "fastnn.forward_layers")


@calls_by_symbol(FORWARD_LAYERS)
def forward_layers(net, first, a, m, act_ws, act_off, r0, r1, pack, wpack, wpack_off):
    """forward_layers_kernel (by its shared symbol in compiled code)."""
    forward_layers_kernel(net, first, a, m, act_ws, act_off, r0, r1, pack, wpack, wpack_off)


@jit(refcount=False)
def sum_squares(values, lo, hi, total):
    """total + sum of values[lo:hi]^2, in float64 and in order (the L2 term)."""
    for i in range(lo, hi):
        v = np.float64(values[i])
        total += v * v
    return total


@jit(refcount=False)
def batch_weight(w, rows):
    """The summed sample weight of the rows ``rows``, in float64 and in row
    order (every epoch loop, the full-batch objective and the distributed
    step weights add a batch's weights this way: the same bits)."""
    total = 0.0
    for i in range(rows.shape[0]):
        total += np.float64(w[rows[i]])
    return total


@jit
def gradient_only(params, l2):
    """An Update bundle that computes gradients and applies nothing (apply
    False; L2 ``l2`` added to the gradient), of the training call's types."""
    zero = params.dtype.type(0)
    return Update(params, params, np.int64(0), l2, zero, zero, zero, zero, zero, False,
                  np.empty((0, 0), params.dtype), np.zeros(1, np.int64), False, False)


@jit(inline="always")
def with_settings(u, lr, first_step):
    """``u`` with the learning rate ``lr``, for the first step of its call
    (keep_now and zero_state as ``u`` has them) or a later one (neither)."""
    return Update(u.state1, u.state2, u.kind, u.l2, lr, u.momentum, u.beta1, u.beta2, u.eps,
                  u.apply, u.keep, u.kept, u.keep_now and first_step,
                  u.zero_state and first_step)


@jit(inline="always")
def copy_range(dst, src, lo, hi):
    """dst[lo:hi] = src[lo:hi] (views from 0: a loop LLVM vectorises)."""
    d = dst[lo:hi]
    v = src[lo:hi]
    for i in range(hi - lo):
        d[i] = v[i]


@jit(inline="always")
def zero_range(dst, lo, hi):
    """dst[lo:hi] = 0."""
    d = dst[lo:hi]
    zero = dst.dtype.type(0)
    for i in range(hi - lo):
        d[i] = zero


@jit(inline="always")
def keep_range(u, params, lo, hi):
    """Copy params[lo:hi] and the optimizer buffers rule ``u.kind`` writes
    (state1 unless plain SGD, state2 for Adam: optim.STATE_BUFFERS_WRITTEN)
    into the rows of ``u.keep``, before the update overwrites them; with
    ``u.zero_state``, then zero those buffers' range (a reset optimizer)."""
    copy_range(u.keep[0], params, lo, hi)
    if u.kind != SGD:
        copy_range(u.keep[1], u.state1, lo, hi)
        if u.zero_state:
            zero_range(u.state1, lo, hi)
    if u.kind == ADAM:
        copy_range(u.keep[2], u.state2, lo, hi)
        if u.zero_state:
            zero_range(u.state2, lo, hi)


@jit(inline="always")
def backward(WT, offs, dims, acts, m, act_ws, act_off, delta_ws, r0, r1, pack):
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
        gemm(delta, WT_l, out, NO_ACC, DERIV, acts[l - 1], WT_l[0], a_in, pack, out[:0])
        delta = out


@jit(refcount=False)
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


@jit(inline="always")
def block_rows(dims, l, lanes):
    """Rows of W_l per block of the weights pass, for a dtype of ``lanes``
    elements per vector: FEW_OUTPUTS_BLOCK_ROWS where dW_l is computed
    transposed (fewer outputs than lanes), else GRAD_BLOCK_ROWS."""
    return FEW_OUTPUTS_BLOCK_ROWS if dims[l + 1] < lanes else GRAD_BLOCK_ROWS


@jit(inline="always")
def layer_block_count(dims, l, lanes):
    """Blocks of the weights pass in W_l (block_rows rows each, the last one
    possibly fewer)."""
    rows = block_rows(dims, l, lanes)
    return (dims[l] + rows - 1) // rows


@jit(inline="always")
def weight_block_count(dims, lanes):
    """Number of blocks of the weights pass, over every W_l."""
    count = 0
    for l in range(dims.shape[0] - 1):
        count += layer_block_count(dims, l, lanes)
    return count


@jit(inline="always")
def weight_block(dims, t, lanes):
    """(layer l, first row, end row) of block t of the weights pass."""
    l = 0
    first = 0
    blocks = layer_block_count(dims, l, lanes)
    while t >= first + blocks:
        first += blocks
        l += 1
        blocks = layer_block_count(dims, l, lanes)
    rows = block_rows(dims, l, lanes)
    i0 = (t - first) * rows
    return l, i0, min(dims[l], i0 + rows)


@jit(inline="always")
def layer_delta(net, work, m, l):
    """delta_l of the batch's m rows (delta_L lies over the logits)."""
    n = net.dims[l + 1]
    if l == net.dims.shape[0] - 2:
        return layer_rows(work.act_ws, work.act_off[l], m, n)
    return layer_rows(work.delta_ws, work.act_off[l], m, n)


@jit(inline="always")
def delta_panels(net, work, m, l):
    """delta_l of the batch's m rows as packed for the weights pass (gemm's
    packed_b: panel q at rows q m..), or an empty matrix for a layer whose
    blocks read delta_l in place (delta_pack_layout)."""
    return _panels(work.dpack, work.dpack_off[l], m, net.dims[l + 1])


@jit(inline="always")
def pack_deltas(net, work, m, r0, r1, first):
    """Rows r0:r1 of delta_l (l >= first) into delta_panels, for each layer
    whose weights-pass blocks read it packed: done by the shard of the rows
    pass that computed those rows, so the blocks of dW_l share one copy."""
    for l in range(first, net.dims.shape[0] - 1):
        if work.dpack_off[l] >= 0:
            pack_b_rows(layer_delta(net, work, m, l), r0, r1, delta_panels(net, work, m, l))


@jit(inline="always")
def bias_gradient(net, work, l, delta):
    """db_l = sum_i delta_l[i, :] into work.grad (rows in order)."""
    _, gb = layer_weights(work.grad, net.offs, net.dims, l)
    zero_range(gb, FIRST, gb.shape[0])
    column_sums_acc(delta, gb)


@jit(inline="always")
def gradient_rows_buffer(net, work, update, l, i0, i1, s):
    """Where block (l, rows i0:i1) of the weights pass, on worker s, puts its
    rows of dW (flat): with an update, worker s's scratch block (reused block
    after block, so it stays in cache: the full gradient never goes through
    memory); without, its place in work.grad."""
    n = net.dims[l + 1]
    if update.apply:
        return work.scratch[s, :(i1 - i0) * n]
    lo = net.offs[l] + i0 * n
    return work.grad[lo:lo + (i1 - i0) * n]


@jit(inline="always")
def weight_gradient_rows(net, work, m, l, i0, i1, dW, s):
    """dW = rows i0:i1 of a_{l-1}^T delta_l over the m rows of the batch, and
    db_l with the block that starts at row 0 (on worker s).

    With fewer outputs than a vector has lanes (a classifier's last layer:
    3 classes in 16 float32 lanes on AVX-512), a^T delta fills a fraction of
    each vector, so the product is computed as dW^T = delta^T a, the rows of
    W along the vectors, into worker s's second scratch block, and copied
    into dW transposed.  The same bits: each element is the same sum over
    the batch rows, in the same order and K blocks (gemm.py).  (100 x 300 x
    3 float32: 12.6 us as a^T delta, 7.4 us as delta^T a, znver4.)
    """
    k = net.dims[l]
    n = net.dims[l + 1]
    if l == 0:
        a_in = work.Xb[:m]
    else:
        a_in = layer_rows(work.act_ws, work.act_off[l - 1], m, k)
    delta = layer_delta(net, work, m, l)
    if n < vector_lanes(dW):
        half = work.scratch.shape[1] // 2
        dWT = work.scratch[s, half:half + n * (i1 - i0)].reshape((n, i1 - i0))
        gemm(delta.T, a_in[:, i0:i1], dWT, NO_ACC, STORE, NO_ACTIVATION, dWT[0], dWT,
             work.pack[s], dWT[:0])
        pack_transpose(dWT, dW)
    else:
        gemm(a_in.T[i0:i1], delta, dW, NO_ACC, STORE, NO_ACTIVATION, delta[0], dW,
             work.pack[s], delta_panels(net, work, m, l))
    if i0 == 0:
        bias_gradient(net, work, l, delta)


@jit(inline="always")
def update_rows(net, work, update, l, i0, i1, g_rows):
    """Rows i0:i1 of W_l (and b_l with the block at row 0), whose gradient is
    ``g_rows`` (flat): the L2 term, then the optimizer step and W_l^T of the
    new rows (``update.apply``), or else the L2 term added to the gradient.
    Returns lambda * sum W^2 over the rows (before the step), plus update_range's
    probe: +0 while the updated values are finite, NaN once one is not, so an
    update that overflowed shows in the step's loss at no extra pass over
    memory."""
    params = net.params
    l2 = update.l2
    k = net.dims[l]
    n = net.dims[l + 1]
    lo = net.offs[l] + i0 * n
    hi = net.offs[l] + i1 * n
    b0 = net.offs[l] + k * n   # where b_l starts
    squares = sum_squares(params, lo, hi, 0.0) if l2 != 0 else 0.0
    if update.apply:
        u = update
        if u.keep_now:   # a transaction's first step: its rollback point, block by block
            # the rows, then with the first block the bias: one keep_range
            # in the code (each inlined copy was 0.45 s of a cold first run)
            for part in range(2 if i0 == 0 else 1):
                keep_range(u, params, lo if part == 0 else b0, hi if part == 0 else b0 + n)
        probe = update_range(params[lo:hi], g_rows, u.state1[lo:hi], u.state2[lo:hi], FIRST,
                             hi - lo, u.kind, u.lr, u.momentum, u.beta1, u.beta2, u.eps, l2)
        if i0 == 0:  # the bias: no weight decay
            probe += update_range(params, work.grad, u.state1, u.state2, b0, b0 + n, u.kind,
                                  u.lr, u.momentum, u.beta1, u.beta2, u.eps,
                                  params.dtype.type(0))
        if l >= 1:
            W, _ = layer_weights(params, net.offs, net.dims, l)
            WT_l = work.WT[net.offs[l]:net.offs[l] + k * n].reshape((n, k))
            pack_transpose(W[i0:i1], WT_l[:, i0:i1])
        return np.float64(l2) * squares + probe
    elif l2 != 0:
        for i in range(hi - lo):
            g_rows[i] += l2 * params[lo + i]
    return np.float64(l2) * squares


@jit(refcount=False)
def weights_block_kernel(net, work, update, m, t, s):
    """Block t of the weights pass, on worker s: its rows of dW, then their
    update; its L2 part goes to work.l2_parts[t].

    With an update, dW goes to worker s's scratch block (reused block after
    block, so it stays in cache: the full gradient never goes through memory);
    without, to work.grad.  Only bundles and integers cross into the parallel
    loop's body (numba 0.68 read the wrong array of a bundle for
    ``work.l2_parts[t] = ...`` written in the body)."""
    l, i0, i1 = weight_block(net.dims, t, vector_lanes(net.params))
    n = net.dims[l + 1]
    g_rows = gradient_rows_buffer(net, work, update, l, i0, i1, s)
    weight_gradient_rows(net, work, m, l, i0, i1, g_rows.reshape((i1 - i0, n)), s)
    work.l2_parts[t] = update_rows(net, work, update, l, i0, i1, g_rows)


def _weights_block_signature(dtype):
    net, _, work, update = bundle_types(dtype)
    return (net, work, update, types.int64, types.int64, types.int64)


WEIGHTS_BLOCK = SharedFunction(weights_block_kernel, _weights_block_signature,
                               "fastnn.weights_block")


@calls_by_symbol(WEIGHTS_BLOCK)
def weights_block(net, work, update, m, t, s):
    """weights_block_kernel (by its shared symbol in compiled code)."""
    weights_block_kernel(net, work, update, m, t, s)


@jit(inline="always")
def gather_rows(batch, work, r0, r1):
    """Rows r0:r1 of the batch: Xb[i] = X[order[i]] (and T, w likewise).

    Returns True when every gathered input is a finite number: the
    estimators' check of X, made here while each row passes through the
    core (an and-reduction LLVM vectorises) rather than as a pass of its own
    over X before training (np.isfinite(X).all(): 2 ms of a 30 ms epoch on
    mnist shapes).  The caller makes a batch with such a row non-finite, so
    the epoch stops before that batch's update and Python names the input."""
    X, T, w, order = batch.X, batch.T, batch.w, batch.order
    Xb, Tb, wb = work.Xb, work.Tb, work.wb
    finite = True
    # explicit loops: a slice assignment here pulls in numba's broadcasting
    # machinery, about 1.5 s of first-run compile time
    for i in range(r0, r1):
        src = order[i]
        for j in range(X.shape[1]):
            x = X[src, j]
            Xb[i, j] = x
            finite &= np.isfinite(x)
        for j in range(T.shape[1]):
            Tb[i, j] = T[src, j]
        wb[i] = w[src]
    return finite


@jit(refcount=False)
def shard_rows_kernel(net, batch, work, g0, g1, s):
    """Loss groups g0:g1 of the batch, on worker s: gather, forward, loss
    gradient (delta_L over the logits, group by group), backward, and the
    deltas packed for the weights pass."""
    m = batch.order.shape[0]
    r0 = g0 * LOSS_GROUP_ROWS
    r1 = min(m, g1 * LOSS_GROUP_ROWS)
    if r1 <= r0:
        return
    finite_rows = gather_rows(batch, work, r0, r1)
    z = forward(net, work.Xb[:m], work.act_ws, work.act_off, r0, r1, work.pack[s],
                no_panels(net))
    for g in range(g0, g1):
        q0 = g * LOSS_GROUP_ROWS
        q1 = min(m, q0 + LOSS_GROUP_ROWS)
        work.group_loss[g], work.group_correct[g] = loss_grad(
            z[q0 - r0:q1 - r0], work.Tb[q0:q1], work.wb[q0:q1], batch.scale, net.output)
    if not finite_rows:   # an input NaN or inf: the batch's loss says so (gather_rows)
        work.group_loss[g0] = np.nan
    backward(work.WT, net.offs, net.dims, net.acts, m, work.act_ws, work.act_off,
             work.delta_ws, r0, r1, work.pack[s])
    pack_deltas(net, work, m, r0, r1, FIRST)


def _shard_rows_signature(dtype):
    net, batch, work, _ = bundle_types(dtype)
    return (net, batch, work, types.int64, types.int64, types.int64)


# The two bodies of the step's parallel loop, compiled once each and called
# by symbol from the parfor (shared.py) rather than linked into its three
# libraries and optimised again in each.
SHARD_ROWS = SharedFunction(shard_rows_kernel, _shard_rows_signature, "fastnn.shard_rows")


@calls_by_symbol(SHARD_ROWS)
def shard_rows(net, batch, work, g0, g1, s):
    """shard_rows_kernel (by its shared symbol in compiled code)."""
    shard_rows_kernel(net, batch, work, g0, g1, s)


ROWS = np.int64(0)      # phases of step_pass (typed: one compiled copy for both)
WEIGHTS = np.int64(1)


@pjit
def parallel_step_pass(phase, net, batch, work, update, threads):
    """One parallel pass of a training step (see the module notes), as
    ``step_pass`` runs it.

    ROWS: the batch X[order] is cut into one shard per thread at multiples of
    LOSS_GROUP_ROWS; each shard gathers its rows (so they are in its core's
    cache), runs them forward, writes the loss gradient and runs them
    backward.  Returns (summed weighted loss, correct rows), the loss summed
    per group of rows and the groups in order.
    WEIGHTS (after ROWS on the same batch): worker s takes blocks s, s +
    workers, ... of the weight gradient, each followed by its update (the big
    blocks of the first layer come first, so dealing them out in turn
    balances the threads; numba hands each thread one contiguous range of a
    prange).  Returns ((lambda/2) sum W^2 before the step, 0).

    One compiled function for both passes: each function with a prange costs
    about 2 s of first-run compile time.  ``threads`` is numba's thread count,
    passed in because calling numba.get_num_threads here would keep the
    caller out of numba's cache.  Which thread does what changes no bits.
    """
    m = batch.order.shape[0]
    n_groups = (m + LOSS_GROUP_ROWS - 1) // LOSS_GROUP_ROWS
    n_tasks = n_groups if phase == ROWS else weight_block_count(net.dims,
                                                                vector_lanes(net.params))
    workers = max(1, min(threads, n_tasks, work.scratch.shape[0]))
    per_worker = (n_groups + workers - 1) // workers
    if workers == 1:
        # the same calls on this thread, without the parallel region: each
        # launch costs about 3 us even on one thread, two a step (a spiral
        # step is about 75 us)
        if phase == ROWS:
            shard_rows(net, batch, work, FIRST, n_groups, FIRST)
        else:
            for t in range(n_tasks):
                weights_block(net, work, update, m, np.int64(t), FIRST)
    else:
        for s in prange(workers):
            if phase == ROWS:
                g0 = min(n_groups, s * per_worker)
                shard_rows(net, batch, work, g0, min(n_groups, g0 + per_worker), np.int64(s))
            else:
                for t in range(s, n_tasks, workers):
                    # int64, not prange's unsigned index: one compiled copy
                    weights_block(net, work, update, m, t, np.int64(s))
    total = 0.0
    correct = 0
    if phase == ROWS:
        for g in range(n_groups):  # in row order: same bits for any thread count
            total += work.group_loss[g]
            correct += work.group_correct[g]
    else:
        for t in range(n_tasks):
            total += work.l2_parts[t]
        total *= 0.5
    return total, correct


def _step_pass_signature(dtype):
    """The argument types every caller of the training step passes for a
    network of ``dtype``."""
    net, batch, work, update = bundle_types(dtype)
    return (types.int64, net, batch, work, update, types.int64)


# The training step's two passes, compiled once per dtype and called by
# symbol (shared.py) from the epoch, the chunked run, the full-batch gradient
# and the cluster shard, instead of being linked into each with the parfor's
# three libraries and optimised again there (about 2 s of a cold first run
# for train_epoch and as much for train_epochs).
STEP_PASS = SharedFunction(parallel_step_pass, _step_pass_signature, "fastnn.step_pass")


@calls_by_symbol(STEP_PASS)
def step_pass(phase, net, batch, work, update, threads):
    """One parallel pass of a training step: ROWS returns (summed weighted
    loss, correct rows), WEIGHTS ((lambda/2) sum W^2 before the step, 0)
    (``parallel_step_pass``; in compiled code called by its shared symbol
    when the bundles have the types of training)."""
    return parallel_step_pass(phase, net, batch, work, update, threads)


@jit
def loss_gradient(net, X, T, w, work, l2, threads):
    """Loss of the whole batch (X, T, w), with L2, and its gradient in work.grad.

    The same arithmetic as one training step, without the update: this is what
    the finite-difference tests check.
    """
    rows = np.arange(X.shape[0])
    weight = batch_weight(w, rows)
    pack_weights_t(net.params, net.offs, net.dims, work.WT)
    batch = Batch(X, T, w, rows, net.params.dtype.type(1.0 / weight))
    update = gradient_only(net.params, l2)
    loss, _ = step_pass(ROWS, net, batch, work, update, threads)
    l2_loss, _ = step_pass(WEIGHTS, net, batch, work, update, threads)
    return loss / weight + l2_loss


@jit
def update_for_step(update, step):
    """The settings of optimizer step number ``step`` (1 for the first): for
    Adam the learning rate becomes its bias-corrected step size."""
    u = update
    lr = u.lr
    if u.kind == ADAM:
        lr = type(u.lr)(adam_step_size(np.float64(u.lr), np.float64(u.beta1),
                                       np.float64(u.beta2), step))
    return with_settings(u, lr, True)


@jit(refcount=False)
def train_epoch(net, X, T, w, order, batch_size, work, update, step, threads):
    """One pass over the rows of X in the order ``order``, in mini-batches.

    ``update`` holds the optimizer state and settings (its learning rate
    becomes Adam's bias-corrected step size at each step).
    Every array is a workspace made once per fit (see trainer.make_workspace), so
    nothing is allocated here.  Returns (summed weighted loss, summed weight,
    correct, steps taken, finite).  When a batch's loss is not finite the epoch
    stops *before* that batch's update, so params hold the last finite step.
    """
    n = order.shape[0]
    loss_total = 0.0
    weight_total = 0.0
    correct_total = 0
    steps = 0
    pack_weights_t(net.params, net.offs, net.dims, work.WT)  # then kept current by each update
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        rows = order[start:start + m]
        weight = batch_weight(w, rows)
        batch = Batch(X, T, w, rows, net.params.dtype.type(1.0 / weight))
        batch_loss, correct = step_pass(ROWS, net, batch, work, update, threads)
        correct_total += correct
        if not np.isfinite(batch_loss):
            return loss_total, weight_total, correct_total, steps, False
        this_step = update_for_step(update, step + steps + 1)
        l2_loss, _ = step_pass(WEIGHTS, net, batch, work, this_step, threads)
        if update.keep_now:   # every block of this first step kept its entry values
            update.kept[0] = 1   # (and zeroed the state, with zero_state)
            update = with_settings(update, update.lr, False)
        steps += 1
        loss_total += batch_loss + l2_loss * weight
        weight_total += weight
    return loss_total, weight_total, correct_total, steps, True


@jit(inline="always")
def all_finite(X):
    """True when every element of X is a finite number.

    The input check of a prediction, made here on each block of rows just
    before the block is predicted (its rows then come from cache): a check
    in NumPy (np.isfinite(X).all()) is a pass of its own over X with a
    temporary of X's size, 5.5 ms of a 20000 x 784 float32 prediction that
    takes about 38 ms at 2 threads, and 1.2 us of a one-row one.  An
    and-reduction without early exit, so LLVM vectorises it; isfinite keeps
    its meaning because the package's fastmath has no 'nnan'/'ninf'.
    """
    finite = True
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            finite &= np.isfinite(X[i, j])
    return finite


@jit(refcount=False)
def predict_block_kernel(params, offs, dims, acts, output, X, out, act_ws, act_off, pack,
                         wpack, wpack_off):
    """Network outputs for the rows of X into ``out`` (on the calling thread,
    with its activation and GEMM pack workspaces; the weights packed ahead
    in (wpack, wpack_off), or an empty wpack_off: each product packs W_l).
    Returns False, and predicts nothing, when X holds NaN or infinity.

    The network comes as its arrays, not as a Net bundle: Python calls this
    function itself for a few rows, and numba's dispatcher takes about 2 us
    more to type a namedtuple argument than its five fields (a tenth of a
    one-row prediction on a fast core)."""
    if not all_finite(X):
        return False
    net = Net(params, offs, dims, acts, output)
    z = forward(net, X, act_ws, act_off, FIRST, X.shape[0], pack, (wpack, wpack_off))
    output_transform(z, net.output)
    # explicit loops and a typed FIRST: the slice assignment pulled in numba's
    # shape-error machinery (5.5 s of first-run compile time) and the literal 0
    # a second compiled copy of forward (1.6 s)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            out[i, j] = z[i, j]
    return True


def _predict_block_signature(dtype):
    f = numba.from_dtype(np.dtype(dtype))
    vector, matrix = types.Array(f, 1, "C"), types.Array(f, 2, "C")
    ints = types.Array(types.int64, 1, "C")
    return (vector, ints, ints, ints, types.int64, matrix, matrix, vector, ints, vector, vector,
            ints)


# A block of prediction, compiled once and called by symbol from the
# parallel prediction's parfor (as the step's bodies are).
PREDICT_BLOCK = SharedFunction(predict_block_kernel, _predict_block_signature,
                               "fastnn.predict_block")


@calls_by_symbol(PREDICT_BLOCK)
def predict_block(params, offs, dims, acts, output, X, out, act_ws, act_off, pack, wpack,
                  wpack_off):
    """predict_block_kernel (by its shared symbol in compiled code; Python
    calls the kernel itself, one call fewer on a one-row prediction)."""
    return predict_block_kernel(params, offs, dims, acts, output, X, out, act_ws, act_off,
                                pack, wpack, wpack_off)


@pjit
def predict_rows(net, X, out, act_ws, act_off, pack, wpack, wpack_off, block, threads):
    """Predictions for every row of X into ``out``, in blocks of ``block`` rows.

    With more than one block, every W_l is first packed into (wpack,
    wpack_off) (weight_pack_layout; empty wpack_off: not), once for all
    blocks and threads; one block packs its own.  One parallel region:
    worker s (at most one per workspace slot of act_ws and pack) takes
    blocks s, s + workers, ...  A row's result does not depend on the block
    it falls in, nor on the number of threads.  Returns False when X holds
    NaN or infinity (each block checks its rows; ``out`` is then not all
    written).
    """
    n = X.shape[0]
    n_blocks = (n + block - 1) // block
    workers = max(1, min(threads, act_ws.shape[0], pack.shape[0], n_blocks))
    # (pack_weights skips the layers an empty layout has no room for)
    panels_off = wpack_off if n_blocks > 1 else wpack_off[:0]
    if n_blocks > 1:
        pack_weights(net, (wpack, wpack_off))
    non_finite_blocks = 0
    if workers == 1:
        # on this thread, without a parallel region (which wakes numba's
        # whole pool even for one iteration): a serial call runs with
        # threads=1 and numba's thread count untouched (_parallel.py)
        for bi in range(n_blocks):
            r0 = bi * block
            r1 = min(n, r0 + block)
            if not predict_block(net.params, net.offs, net.dims, net.acts, net.output,
                                 X[r0:r1], out[r0:r1], act_ws[0], act_off, pack[0], wpack,
                                 panels_off):
                non_finite_blocks += 1
    else:
        for s in prange(workers):
            for bi in range(s, n_blocks, workers):
                r0 = bi * block
                r1 = min(n, r0 + block)
                if not predict_block(net.params, net.offs, net.dims, net.acts, net.output,
                                     X[r0:r1], out[r0:r1], act_ws[s], act_off, pack[s],
                                     wpack, panels_off):
                    non_finite_blocks += 1
    return non_finite_blocks == 0
