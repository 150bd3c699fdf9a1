"""A multilayer perceptron: layer sizes, activations, the flat parameter buffer.

All weights and biases live in one contiguous array ``params``; ``weights`` and
``biases`` are views into it.  That keeps the optimizer a single loop, makes
save/load one array, and lets the compiled step address layers by offset.
"""
import functools
import threading

import numba
import numpy as np

from . import _validation as V
from . import sparse as _sparse
from ._parallel import parallel_region
from .kernels import activations as act_k
from .kernels import losses as loss_k
from .kernels.gemm import MR
from .kernels.step import (Net, pack_workspace_elements, predict_block_kernel, predict_rows,
                           weight_pack_layout)

# Rows per block in parallel prediction, and workspace slots (one activation
# workspace per thread, up to this many threads).  Up to
# SERIAL_PREDICT_ROWS rows are predicted on the calling thread, with no thread
# pool wake-up: one row then costs little more than its arithmetic.  A row's
# result is the same bits on either path (gemm.py).  A block is a whole number
# of the GEMM's register tiles (MR rows): a block of 128 rows ended in a
# tile of 2 rows computed as 6, and 4000 rows through 784-256-10 predicted
# 3-6 % faster in blocks of 132 (in-process, alternated, 1 thread, znver3).
PREDICT_BLOCK = 22 * MR
PREDICT_SLOTS = 8
SERIAL_PREDICT_ROWS = 32
# A prediction of at most this much work (rows x weights, multiply-adds)
# also stays on the calling thread, block after block: below it, waking the
# pool costs more than the second thread saves (Network.predict_proba at 2
# threads, serial / parallel: 2-100-3 of 300 rows 16 / 59 us, of 1500 rows
# 73 / 85; 20-50-2 of 1000 rows 55 / 71, of 2000 rows 117 / 62; rocketlake),
# and a small first run does not compile the parallel prediction
# (predict_rows, about 1.3 s of CPU).
SERIAL_PREDICT_WORK = 800_000


class Network:
    """A dense feed-forward network with a softmax, linear or sigmoid output.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, input first and output last, e.g. ``[2, 100, 3]``.
    activation : str or sequence of str
        Hidden-layer activation ('relu', 'sigmoid' (alias 'logistic'), 'tanh',
        'identity'), one name for all hidden layers or one per hidden layer.
    output : {'softmax', 'linear', 'sigmoid'}
        Output layer and loss: softmax cross-entropy (classification), linear
        with squared error (regression), sigmoid with binary cross-entropy
        (multi-label).
    dtype : 'float32' (default) or 'float64'
    seed : int or None
        Seed of the initial weights (He for relu, Glorot otherwise).
    """

    def __init__(self, sizes, activation="relu", output="softmax", dtype="float32", seed=None):
        sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else None
        if sizes is None or len(sizes) < 2:
            raise ValueError("sizes must list at least an input and an output size, "
                             f"e.g. [2, 100, 3]; got {sizes!r}")
        self.sizes = tuple(V.check_positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes))
        n_hidden = len(self.sizes) - 2
        names = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(names) != n_hidden:
            raise ValueError(f"activation lists {len(names)} names for {n_hidden} hidden layers")
        for i, name in enumerate(names):
            if name not in act_k.CODES:
                raise ValueError(f"activation[{i}] must be one of "
                                 f"{sorted(act_k.CODES)}, got {name!r}")
        self.activations = tuple(act_k.NAMES[act_k.CODES[n]] for n in names)
        if output not in loss_k.CODES:
            raise ValueError(f"output must be one of {sorted(loss_k.CODES)}, got {output!r}")
        self.output = output
        self.dtype = V.check_dtype(dtype)
        self._build_layout()
        self.params = np.zeros(self.n_params, dtype=self.dtype)
        self.initialize(seed)

    # ------------------------------------------------------------------ layout
    def _build_layout(self):
        dims = np.asarray(self.sizes, dtype=np.int64)
        sizes_per_layer = dims[:-1] * dims[1:] + dims[1:]
        self._dims = dims
        self._offs = np.concatenate([[0], np.cumsum(sizes_per_layer)[:-1]]).astype(np.int64)
        self.n_params = int(sizes_per_layer.sum())
        codes = [act_k.CODES[a] for a in self.activations] + [act_k.IDENTITY]
        self._acts = np.asarray(codes, dtype=np.int64)
        self._output_code = np.int64(loss_k.CODES[self.output])

    @functools.cached_property
    def n_weights(self):
        """Number of weights (biases not counted): the work of a step per row."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def n_layers(self):
        """Number of weight layers (hidden layers + 1)."""
        return len(self.sizes) - 1

    @property
    def weights(self):
        """List of weight matrices W_l (fan_in x fan_out), views into ``params``."""
        return [self._view(l)[0] for l in range(self.n_layers)]

    @property
    def biases(self):
        """List of bias vectors b_l, views into ``params``."""
        return [self._view(l)[1] for l in range(self.n_layers)]

    def _view(self, l, buffer=None):
        buffer = self.params if buffer is None else buffer
        k, n = self.sizes[l], self.sizes[l + 1]
        start = self._offs[l]
        return (buffer[start:start + k * n].reshape(k, n),
                buffer[start + k * n:start + k * n + n])

    def initialize(self, seed=None):
        """Draw fresh weights from ``seed``: He-normal for relu layers, Glorot-uniform
        for the others; biases start at zero."""
        rng = np.random.default_rng(seed)
        for l in range(self.n_layers):
            W, b = self._view(l)
            fan_in, fan_out = W.shape
            is_relu = l < self.n_layers - 1 and self.activations[l] == "relu"
            if is_relu:
                W[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=W.shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                W[...] = rng.uniform(-limit, limit, size=W.shape)
            b[...] = 0
        return self

    def copy(self):
        """An independent copy (parameters included)."""
        clone = Network.__new__(Network)
        clone.__dict__.update(self.__dict__)
        clone.__dict__.pop("_predict_local", None)   # its own prediction workspaces
        clone.params = self.params.copy()
        return clone

    def __getstate__(self):
        # prediction workspaces are per process and thread: never pickled
        state = self.__dict__.copy()
        state.pop("_predict_local", None)
        return state

    # -------------------------------------------------------------- inference
    def _check_X(self, X, name="X", finite=True):
        """X as the kernels take it (see V.as_float_matrix; ``finite=False``
        for X that goes straight to _forward_checked, which checks it)."""
        if _sparse.is_sparse_input(X):
            return _sparse.as_sparse_rows(X, name, self.dtype, n_features=self.sizes[0])
        return V.as_float_matrix(X, name, self.dtype, n_features=self.sizes[0], finite=finite)

    def _bundle(self):
        """The network as compiled code sees it (kernels.step.Net)."""
        return Net(self.params, self._offs, self._dims, self._acts, self._output_code)

    def _forward_checked(self, X, name="X"):
        """Outputs for X from _check_X (any ``finite``): dense X is checked
        for NaN and infinity by the prediction kernels, block by block, and
        raises V.non_finite_error(name, ...) with no other effect."""
        if _sparse.is_sparse(X):
            return _sparse.forward(self, X)
        n = X.shape[0]
        out = np.empty((n, self.sizes[-1]), dtype=self.dtype)
        if self._predicts_serially(n):
            finite = self._predict_serially(X, out)
        else:
            ws, act_off, pack, wp = self._predict_workspace(n > PREDICT_BLOCK)
            with parallel_region() as threads:
                finite = predict_rows(self._bundle(), X, out, ws, act_off, pack, *wp,
                                      PREDICT_BLOCK, threads)
        if not finite:
            raise V.non_finite_error(name, self.dtype)
        return out

    def _predicts_serially(self, rows):
        """Whether a prediction of ``rows`` rows runs on the calling thread:
        at most SERIAL_PREDICT_ROWS rows, or SERIAL_PREDICT_WORK multiply-adds."""
        return rows <= SERIAL_PREDICT_ROWS or rows * self.n_weights <= SERIAL_PREDICT_WORK

    def _parallel_prediction_rows(self):
        """The fewest rows whose prediction runs in the parallel region."""
        return max(SERIAL_PREDICT_ROWS, SERIAL_PREDICT_WORK // self.n_weights) + 1

    def _predict_serially(self, X, out):
        """Outputs for the rows of X into ``out`` on the calling thread, block
        after block of PREDICT_BLOCK rows, each packing W_l itself (a single
        block is X itself, unsliced: a one-row prediction slices nothing).
        False, and the rest not predicted, at a block holding NaN or inf."""
        ws, act_off, pack, wp = self._predict_workspace()
        args = (self.params, self._offs, self._dims, self._acts, self._output_code)
        n = X.shape[0]
        if n <= PREDICT_BLOCK:
            return predict_block_kernel(*args, X, out, ws[0], act_off, pack[0], *wp)
        for r0 in range(0, n, PREDICT_BLOCK):
            r1 = r0 + PREDICT_BLOCK
            if not predict_block_kernel(*args, X[r0:r1], out[r0:r1], ws[0], act_off, pack[0],
                                        *wp):
                return False
        return True

    def _predict_workspace(self, packed_weights=False):
        """Workspaces for prediction, made once per network and Python thread
        (two threads predicting at once never share one): (activations, their
        offsets, GEMM pack workspaces, (wpack, wpack_off)), one slot of each
        per thread numba may run, up to PREDICT_SLOTS; with
        ``packed_weights``, wpack holds room for every W_l packed
        (weight_pack_layout: a prediction of several blocks packs each W_l
        once), made on the first call that needs it; else it is empty."""
        local = self.__dict__.get("_predict_local")
        if local is None:
            local = self.__dict__.setdefault("_predict_local", threading.local())
        cached = getattr(local, "ws", None)
        if cached is None:
            slots = max(1, min(PREDICT_SLOTS, numba.config.NUMBA_NUM_THREADS))
            ws = np.empty((slots, PREDICT_BLOCK * int(self._dims[1:].sum())), dtype=self.dtype)
            pack = np.empty((slots, pack_workspace_elements(self._dims, self.dtype.itemsize)),
                            dtype=self.dtype)
            no_weights = (np.empty(0, self.dtype), np.empty(0, np.int64))
            cached = local.ws = (ws, self._activation_offsets(PREDICT_BLOCK), pack, no_weights)
        if not packed_weights:
            # never the packed layout to a call that does not pack: its
            # panels hold W as the last call of several blocks packed it, and
            # the parameters may have changed since (a few rows predicted
            # after a big prediction and a partial_fit read the old weights)
            return cached
        layout = getattr(local, "weights", None)
        if layout is None:
            layout = local.weights = weight_pack_layout(self._dims, self.dtype)
        return (*cached[:3], layout)

    def _activation_offsets(self, rows):
        """Where layer l's outputs for ``rows`` rows start in a flat workspace
        holding every layer's (rows x width) block, one after the other."""
        return rows * np.concatenate([[0], np.cumsum(self._dims[1:-1])]).astype(np.int64)

    def forward(self, X):
        """Network output for X: class probabilities (softmax), label
        probabilities (sigmoid) or the regression values (linear)."""
        return self._forward_checked(self._check_X(X, finite=False))

    def predict_proba(self, X):
        """Class (or label) probabilities, shape (n_samples, n_outputs)."""
        if self.output == "linear":
            raise AttributeError("predict_proba needs a softmax or sigmoid output; "
                                 "this network is a regressor (output='linear')")
        return self.forward(X)

    def predict(self, X):
        """Class indices (softmax), 0/1 label matrix (sigmoid) or values (linear)."""
        out = self.forward(X)
        if self.output == "softmax":
            return out.argmax(axis=1)
        if self.output == "sigmoid":
            return (out > 0.5).astype(np.int64)
        return out

    def score(self, X, y):
        """Accuracy (classification, exact match for multi-label) or R^2 (regression)."""
        pred = self.predict(X)
        y = np.asarray(y)
        if self.output == "linear":
            y = y.reshape(pred.shape).astype(np.float64)
            ss_res = ((y - pred) ** 2).sum(axis=0)
            ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
            return float(np.mean(1.0 - ss_res / np.where(ss_tot == 0, 1.0, ss_tot)))
        if self.output == "sigmoid":
            return float(np.mean(np.all(pred == y.reshape(pred.shape), axis=1)))
        return float(np.mean(pred == y.reshape(-1)))

    def __repr__(self):
        return (f"Network(sizes={list(self.sizes)}, activation={list(self.activations)}, "
                f"output={self.output!r}, dtype={self.dtype.name!r})")
