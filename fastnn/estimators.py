"""scikit-learn-compatible ``MLPClassifier`` and ``MLPRegressor`` on fastnn's trainer.

Parameter names and meanings follow ``sklearn.neural_network`` so that a
script switches by changing its import.  The points where the arithmetic is
defined by us rather than by scikit-learn:

* ``alpha``: scikit-learn adds ``alpha / (2 * sw_sum) * sum ||W||^2`` to each
  mini-batch's mean loss (``sw_sum`` = the batch's summed sample weight, i.e.
  its row count without weights).  The trainer's objective is
  ``mean loss + l2/2 * sum ||W||^2`` with one ``l2`` per epoch, so we pass
  ``l2 = alpha / (batch_size * mean sample weight)``: identical for every full
  mini-batch with unit weights; the last, shorter batch of an epoch gets the
  full batch's (smaller) penalty instead of a larger one.
* Initial weights: scikit-learn's Glorot-uniform draws (factor 6, 2 for
  'logistic'), from ``numpy.random.RandomState(random_state)`` in the same
  order, and the same per-epoch shuffling, so an integer ``random_state``
  starts from the same weights and visits the rows in the same order as
  scikit-learn.  Numbers still differ in rounding (float32 by default, other
  summation order).
* The early-stopping split is our own stratified shuffle split (same sizes as
  scikit-learn's ``train_test_split``; not the same rows).
* The reported loss of multi-output regression is ``1/2 mean_rows sum_outputs``
  (scikit-learn also averages over outputs); gradients are the same.
"""
import contextlib
import hashlib
import json
import os
import math
import numbers
import operator
import warnings
import weakref

import numpy as np

from . import _compile_notice
from . import _validation as V
from . import sparse as _sparse
from ._parallel import num_threads
from ._compat import (BaseEstimator, ClassifierMixin, ConvergenceWarning,
                      DataConversionWarning, NotFittedError, RegressorMixin,
                      available_if)
from ._estimator_io import _STOCHASTIC_ONLY, load_estimator, save_estimator
from .epoch_order import InOrder, RunningShuffle, seeded_random_state
from .network import Network
from .optimizers import SGD, Adam
from .schedules import Adaptive, Constant, InvScaling, Plateau
from .trainer import Trainer, _input_error, serial_step, unit_weights

_SK_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "sigmoid": "sigmoid",
                   "tanh": "tanh", "relu": "relu"}


# ----------------------------------------------------------------- helpers
def _follow(published, record):
    """The fitted curve ``published`` brought up to the trainer's ``record``:
    extended by the new epochs when it is a prefix of it (partial_fit and
    warm_start continue one trainer: rebuilding the whole list made a loop
    of n calls cost O(n^2)), else a new list of floats."""
    n = 0 if published is None else len(published)
    if published is not None and n <= len(record) and (
            n == 0 or published[-1] == float(record[n - 1])):
        published.extend(float(v) for v in record[n:])
        return published
    return [float(v) for v in record]


def _one_hot(idx, kind, n_classes, dtype):
    """(indices, T, n_outputs, label dtype) for labels at positions ``idx`` of
    classes_: one 0/1 column for a binary problem, one per class otherwise.
    T is rows of a small cached table picked in one call (``take``; a
    zero-filled T set by flat positions took five NumPy calls), for up to
    _TABLE_CLASSES classes (the table has n_classes^2 entries); an index
    past the last class raises IndexError."""
    if n_classes > _TABLE_CLASSES and kind != "binary":
        if idx.size and idx.max() >= n_classes:
            raise IndexError(f"label position {idx.max()} is out of bounds for "
                             f"{n_classes} classes")
        T = np.zeros((idx.shape[0], n_classes), dtype=dtype)
        T[np.arange(idx.shape[0]), idx] = 1
        return idx, T, 1, np.dtype(np.int64)
    key = (kind == "binary", n_classes, np.dtype(dtype).str)
    rows = _CODE_ROWS.get(key)
    if rows is None:
        rows = np.eye(n_classes, dtype=dtype)
        if kind == "binary":
            rows = np.ascontiguousarray(rows[:, 1:])   # the column of the second class
        if len(_CODE_ROWS) >= 16:
            _CODE_ROWS.clear()
        _CODE_ROWS[key] = rows
    return idx, rows.take(idx, axis=0), 1, np.dtype(np.int64)


# (binary?, classes, dtype) -> the rows of T for each class (_one_hot): at
# most 16 tables of at most _TABLE_CLASSES^2 entries (512 kB in float64)
_CODE_ROWS = {}
_TABLE_CLASSES = 256


def _label_target(kind, classes_, indices, T, n_outputs, label_dtype):
    """The encoded targets of a classifier fit (see _encode_targets)."""
    return {"kind": kind, "indices": indices, "T": T, "n_outputs": n_outputs,
            "label_dtype": label_dtype,
            "out_activation": "softmax" if kind == "multiclass" else "logistic",
            "output_name": "softmax" if kind == "multiclass" else "sigmoid",
            "fitted": {"classes_": classes_, "_kind": kind, "_label_dtype": label_dtype}}


# estimator -> its two generators for int seeds (BaseMLP._fit_random_state),
# kept beside the estimator rather than in it: its attributes change only
# when a call succeeds
_OWN_RNGS = weakref.WeakKeyDictionary()
# estimator -> its hyperparameters as last checked (_CheckedParams): a
# partial_fit loop checks them once, not per call (75-85 us of a 2-100-3
# spiral call of 520-550 us under cProfile); kept beside the estimator as
# _OWN_RNGS is
_CHECKED_PARAMS = weakref.WeakKeyDictionary()
_PARAM_READERS = {}   # estimator class -> attrgetter of its __init__ parameters


_SCALAR_TYPES = frozenset((int, float, bool, str, type(None)))


def _frozen(value):
    """``value`` as a hashable key that equals another only for the same type
    and contents (so 200 and 200.0, or True and 1, are different keys; a list
    is read as it is now, so one changed in place is a new key)."""
    if type(value) in _SCALAR_TYPES:   # most parameters: no further tests
        return (type(value), value)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((_frozen(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return (np.ndarray, value.dtype.str, value.shape, value.tobytes())
    try:
        hash(value)
    except TypeError:
        return (type(value), id(value))     # unhashable: its identity
    return (type(value), value)


class _CheckedParams:
    """Hyperparameter values as last checked, and the checked dict."""

    def __init__(self, values, checked):
        self.values = values
        self.checked = checked
        # values that may change without being set again (a list changed in
        # place), compared by their _frozen key; the others by identity
        self.mutable = [(i, _frozen(v)) for i, v in enumerate(values)
                        if not _immutable(v)]


def _immutable(value):
    """True for a scalar, or a tuple of such (hidden_layer_sizes)."""
    if type(value) is tuple:
        return all(type(v) in _SCALAR_TYPES for v in value)
    return type(value) in _SCALAR_TYPES


def _same_params(values, cached):
    """Whether hyperparameter ``values`` are those of ``cached`` (a
    _CheckedParams): the same objects (compared in C: a partial_fit loop
    checks 30 of them per call), and the same contents for the mutable ones."""
    if not all(map(operator.is_, values, cached.values)):
        return False
    return all(_frozen(values[i]) == key for i, key in cached.mutable)


def _check_random_state(seed, build=True):
    """A RandomState from None (numpy's global one), an int or a RandomState;
    with build=False only the check (seeding a RandomState costs ~100 us,
    a noticeable part of a small partial_fit call that does not need one)."""
    if not build:
        if seed is None or isinstance(seed, np.random.RandomState) or (
                isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
            return None
    elif seed is None:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state must be None, an int or a numpy RandomState; got {seed!r}")


def _is_dask(*objs):
    """True if any of ``objs`` is a Dask collection (checked by module name:
    dask is never imported for this; NumPy arrays and None at once)."""
    for o in objs:
        if (o is not None and type(o) is not np.ndarray
                and type(o).__module__.partition(".")[0] in ("dask", "dask_expr")):
            return True
    return False


def _dask_predict(est, X, method):
    """A prediction method on Dask X: a lazy Dask array (fastnn.distributed)."""
    from . import distributed
    return distributed.predict(est, X, method)


def _feature_names(X):
    """Column names of a data frame if they are all strings, else None."""
    cols = getattr(X, "columns", None)
    if cols is None or hasattr(X, "toarray"):
        return None
    names = np.asarray(list(cols), dtype=object)
    if len(names) and all(isinstance(c, str) for c in names):
        return names
    return None


def _as_2d_float(X, name, dtype, finite=True):
    """X as a C-contiguous 2-D float array, with scikit-learn's error wording
    where its estimator checks look for it (``finite=False``: NaN and inf
    left to the caller, as V.as_float_matrix)."""
    if X is None:
        raise ValueError(f"{name} is None; expected a 2-D array-like of numbers")
    if _sparse.is_sparse_input(X):
        # scipy.sparse input: canonical CSR of the network's dtype, never densified
        return _sparse.as_sparse_rows(X, name, dtype)
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name} must hold numbers ({exc})") from None
    elif arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"Expected a 2D array for {name}, got {arr.ndim}-D with shape "
                         f"{arr.shape}. Reshape your data either using "
                         "array.reshape(-1, 1) if your data has a single feature or "
                         "array.reshape(1, -1) if it contains a single sample.")
    if arr.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={arr.shape}) while a "
                         "minimum of 1 is required.")
    if arr.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={arr.shape}) while a "
                         "minimum of 1 is required.")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not out.flags.writeable:
        # numba compiles a separate (and here failing) specialisation for
        # read-only arrays, e.g. memory-mapped data: hand it a private copy.
        out = out.copy()
    if finite and not np.isfinite(out).all():
        raise V.non_finite_error(f"Input {name}", dtype)
    return out


def _as_sample_weight(sample_weight, n):
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.dtype.kind not in "biuf" or w.shape != (n,):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n},): one number "
                         "per sample")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("sample_weight must not be all zero")
    return w


def _stratified_split(n, strata, fraction, rng):
    """(train, val) row indices: ceil(fraction * n) validation rows, drawn per
    stratum in proportion to its size (largest remainders), or uniformly."""
    n_val = int(math.ceil(fraction * n))
    if strata is None:
        perm = rng.permutation(n)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    groups, inverse = np.unique(strata, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(groups))
    exact = counts * n_val / n
    take = np.floor(exact).astype(np.int64)
    rest = n_val - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:rest]] += 1
    val = []
    for g in range(len(groups)):
        rows = np.flatnonzero(inverse == g)
        val.append(rows[rng.permutation(len(rows))[:take[g]]])
    val = np.sort(np.concatenate(val))
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


# ------------------------------------------------------------------- base
class _BaseMLP(BaseEstimator):
    """Shared fit / partial_fit machinery of the classifier and the regressor."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dtype="float32", n_threads=None,
                 callbacks=None, checkpoint=None, checkpoint_every=10):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.n_threads = n_threads
        self.callbacks = callbacks
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every

    # ------------------------------------------------------- validation
    def _checked_params(self):
        """Every hyperparameter checked (nothing is changed); returns a dict.
        Checked again only when one of them changed since the last call."""
        cls = type(self)
        read = _PARAM_READERS.get(cls)
        if read is None:
            read = _PARAM_READERS.setdefault(cls, operator.attrgetter(*cls._get_param_names()))
        values = read(self)
        cached = _CHECKED_PARAMS.get(self)
        if cached is None or not _same_params(values, cached):
            cached = _CheckedParams(values, self._check_params_now())
            _CHECKED_PARAMS[self] = cached
        return {k: list(v) if isinstance(v, list) else v for k, v in cached.checked.items()}

    def _check_params_now(self):
        """Every hyperparameter checked: the dict of _checked_params."""
        p = {}
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be an int or a sequence of ints; "
                             f"got {self.hidden_layer_sizes!r}") from None
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
                raise ValueError(f"hidden_layer_sizes must hold integers >= 1; got "
                                 f"{self.hidden_layer_sizes!r}")
        p["sizes"] = [int(s) for s in sizes]
        acts = [self.activation] * len(sizes) if isinstance(self.activation, str) \
            else list(self.activation) if isinstance(self.activation, (list, tuple)) else None
        if acts is None or len(acts) != len(sizes) or not all(
                isinstance(a, str) and a in _SK_ACTIVATIONS for a in acts):
            raise ValueError(f"activation must be one of {sorted(_SK_ACTIVATIONS)} or a "
                             f"list of them, one per hidden layer ({len(sizes)}); got "
                             f"{self.activation!r}")
        p["activations"] = [_SK_ACTIVATIONS[a] for a in acts]
        if self.solver not in ("sgd", "adam", "lbfgs"):
            raise ValueError(f"solver must be 'lbfgs', 'sgd' or 'adam'; got {self.solver!r}")
        p["alpha"] = V.check_float(self.alpha, "alpha", low=0.0)
        if self.batch_size != "auto":
            V.check_positive_int(self.batch_size, "batch_size")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or "
                             f"'adaptive'; got {self.learning_rate!r}")
        V.check_float(self.learning_rate_init, "learning_rate_init", low=0.0, low_open=True)
        V.check_float(self.power_t, "power_t", low=0.0)
        V.check_positive_int(self.max_iter, "max_iter")
        V.check_float(self.tol, "tol", low=0.0)
        V.check_float(self.momentum, "momentum", low=0.0, high=1.0)
        V.check_float(self.validation_fraction, "validation_fraction", low=0.0, high=1.0,
                      low_open=True, high_open=True)
        V.check_float(self.beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        V.check_float(self.beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        V.check_float(self.epsilon, "epsilon", low=0.0, low_open=True)
        V.check_positive_int(self.n_iter_no_change, "n_iter_no_change")
        V.check_positive_int(self.max_fun, "max_fun")
        for flag in ("shuffle", "verbose", "warm_start", "nesterovs_momentum",
                     "early_stopping"):
            if not isinstance(getattr(self, flag), (bool, np.bool_, numbers.Integral)):
                raise ValueError(f"{flag} must be a bool; got {getattr(self, flag)!r}")
        p["dtype"] = V.check_dtype(self.dtype)
        if self.n_threads is not None:
            V.check_positive_int(self.n_threads, "n_threads")
        cbs = () if self.callbacks is None else self.callbacks
        if callable(cbs):
            cbs = (cbs,)
        if not all(callable(cb) for cb in cbs):
            raise ValueError("callbacks must be a function or a list of functions "
                             "f(logs) -> bool")
        p["callbacks"] = tuple(cbs)
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)):
                raise ValueError(f"checkpoint must be None or a file path; got "
                                 f"{self.checkpoint!r}")
            if self.early_stopping:
                raise ValueError("checkpoint cannot be combined with early_stopping yet (the "
                                 "best weights so far are not part of the checkpoint)")
        V.check_positive_int(self.checkpoint_every, "checkpoint_every")
        _check_random_state(self.random_state, build=False)
        return p

    def _check_fitted(self):
        if not hasattr(self, "_network"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. "
                                 "Call 'fit' with appropriate arguments before using this "
                                 "estimator.")

    def _check_X_predict(self, X):
        self._check_fitted()
        names = _feature_names(X)
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is not None and names is None:
            warnings.warn(f"X does not have valid feature names, but {type(self).__name__} "
                          "was fitted with feature names", UserWarning)
        elif fitted is None and names is not None:
            warnings.warn(f"X has feature names, but {type(self).__name__} was fitted "
                          "without feature names", UserWarning)
        elif fitted is not None and not np.array_equal(names, fitted):
            raise ValueError("The feature names should match those that were passed "
                             "during fit.")
        # NaN and inf are found by the prediction kernels (_forward)
        X = _as_2d_float(X, "X", self._network.dtype, finite=False)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        return X

    def _forward(self, X):
        X = self._check_X_predict(X)   # C-contiguous, the network's dtype
        if self._network._predicts_serially(X.shape[0]):   # on this thread alone
            return self._network._forward_checked(X, "Input X")
        with num_threads(self.n_threads):
            return self._network._forward_checked(X, "Input X")

    # -------------------------------------------------------------- fit
    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) for up to ``max_iter`` epochs; returns self.

        With ``warm_start=True`` a fitted model continues from its weights.
        A call that raises leaves the estimator exactly as it was.
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        p = self._checked_params()
        if self.verbose:   # a cold numba cache: say why the first fit takes seconds
            _compile_notice.enable()
        if (self.solver != "lbfgs" and hasattr(self, "_network") and not hasattr(
                self, "loss_curve_") and (incremental or self.warm_start)):
            # scikit-learn fails here with an AttributeError on loss_curve_
            raise ValueError(f"this model was fitted with solver='lbfgs', which keeps no "
                             f"stochastic-solver state: continuing it with solver="
                             f"{self.solver!r} is not supported; fit with warm_start=False")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None.")
        if _is_dask(X, y, sample_weight):   # data-parallel on a Dask cluster
            from . import distributed
            return distributed.fit(self, X, y, sample_weight, p, incremental, classes)
        names = _feature_names(X)
        # NaN and inf: found by the training kernels as each row is gathered
        # (kernels.step.gather_rows; the trainer names X), not by a pass over X here
        X = _as_2d_float(X, "X", p["dtype"], finite=self.solver == "lbfgs")
        reuse = hasattr(self, "_network") and (incremental or bool(self.warm_start))
        if reuse:
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} "
                                 f"is expecting {self.n_features_in_} features as input.")
            if (list(self._network.sizes[1:-1]) != p["sizes"]
                    or list(self._network.activations) != p["activations"]):
                raise ValueError("hidden_layer_sizes or activation changed since the last "
                                 "fit; fit with warm_start=False to start a new network")
            if p["dtype"] != self._network.dtype:
                raise ValueError(f"dtype changed from {self._network.dtype.name} to "
                                 f"{p['dtype'].name}; refit without warm_start")
        target = self._encode_targets(y, X.shape[0], p["dtype"], reuse, incremental, classes)
        w = _as_sample_weight(sample_weight, X.shape[0])
        w = self._apply_class_weight(w, target, incremental)
        # ---- solver='lbfgs' (fastnn.lbfgs): a full-batch run with its own commit
        if self.solver == "lbfgs":
            return self._fit_lbfgs(X, target, w, p, reuse, names)
        trainer, rng = self._train(X, target, w, p, reuse, incremental)
        self._commit(trainer, rng, target, names)
        return self

    def _build_network(self, n_features, n_outputs, p, rng, output):
        """A new network with scikit-learn's Glorot-uniform initial weights drawn
        from ``rng`` in scikit-learn's order (W then b, layer by layer)."""
        sizes = [n_features, *p["sizes"], n_outputs]
        net = Network(sizes, activation=p["activations"], output=output,
                      dtype=p["dtype"], seed=0)
        logistic_only = (all(a == "sigmoid" for a in p["activations"]) if p["activations"]
                         else _SK_ACTIVATIONS.get(self.activation) == "sigmoid")
        for l in range(net.n_layers):
            W, b = net._view(l)
            fan_in, fan_out = W.shape
            # scikit-learn's factor: 2 when its (single) activation is logistic;
            # aliases and per-layer lists resolved to names in p["activations"]
            factor = 2.0 if logistic_only else 6.0
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rng.uniform(-bound, bound, (fan_in, fan_out))
            b[...] = rng.uniform(-bound, bound, fan_out)
        return net

    def _make_optimizer(self, lr):
        if self.solver == "adam":
            return Adam(lr=lr, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
        return SGD(lr=lr, momentum=self.momentum, nesterov=bool(self.nesterovs_momentum))

    def _schedule(self):
        """scikit-learn's learning_rate (it applies to solver='sgd' only)."""
        if self.solver != "sgd" or self.learning_rate == "constant":
            return Constant()
        if self.learning_rate == "invscaling":
            return InvScaling(float(self.learning_rate_init), float(self.power_t))
        return Adaptive(factor=5.0, min_lr=1e-6)

    def _stopping(self, early_stopping):
        """scikit-learn's tol / n_iter_no_change rule, on the validation score
        (keeping the best weights) when early stopping, else on the loss."""
        return Plateau(monitor="val_score" if early_stopping else "loss", tol=float(self.tol),
                       patience=int(self.n_iter_no_change), restore_best=early_stopping)

    def _train(self, X, target, w, p, reuse, incremental, source=None):
        """Map scikit-learn's parameters onto the Trainer and run its loop.

        A new fit builds a new network and trainer; warm_start and partial_fit
        train the fitted ones in place, inside ``trainer.transaction``, so a
        call that raises leaves them as they were (no copy of the model).
        ``source``: a fastnn.distributed.ClusterData standing in for X (its
        ``shape``), whose epochs run on the cluster (no early stopping or
        checkpoint there; the caller refuses them)."""
        T = target["T"]
        n_outputs = T.shape[1] if source is None else source.n_outputs
        # partial_fit ignores early stopping, as scikit-learn's does
        early_stopping = bool(self.early_stopping) and not incremental
        if reuse:
            trainer = self._trainer if self._trainer is not None else self._trainer_from_fitted()
            rng = self._rng if incremental else self._fit_random_state()
        else:
            rng = self._fit_random_state()
            net = self._build_network(X.shape[1], n_outputs, p, rng, target["output_name"])
            trainer = Trainer(net, optimizer=self._make_optimizer(float(self.learning_rate_init)),
                              shuffle=False)
        val = None
        if early_stopping:   # the split (stratified for single-label classification)
            bad_input = _input_error(X)   # the validation rows are not gathered by a step
            if bad_input is not None:
                raise bad_input
            tr, va = _stratified_split(X.shape[0], target.get("indices"),
                                       self.validation_fraction, rng)
            if len(va) < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            val = (X[va], T[va], None if w is None else w[va].astype(X.dtype))
            X, T = X[tr], T[tr]
            w = None if w is None else w[tr]
        n = X.shape[0]
        batch = min(200, n) if self.batch_size == "auto" else self.batch_size
        if batch > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                          "It is going to be clipped")
            batch = n
        if source is None:
            w_full = unit_weights(n, X.dtype) if w is None else w.astype(X.dtype)
            mean_w = float(w_full.mean()) if w is not None else 1.0
        else:   # the weights stay on the workers
            w_full, mean_w = None, source.mean_weight
        epochs = 1 if incremental else int(self.max_iter)
        checkpoint = None if incremental else self.checkpoint
        owner = None if checkpoint is None else {
            "estimator": type(self).__name__, "fingerprint": self._fingerprint(X, T, w_full)}
        done_before, resumed_reason = 0, None
        if checkpoint is not None and os.path.exists(checkpoint):
            trainer, done_before, epochs, resumed_reason = self._resume_checkpoint(
                checkpoint, owner, epochs)
            rng = trainer.order.rng if isinstance(trainer.order, RunningShuffle) else rng
        # a local run keeps its rollback point in its first step (no copy of
        # the model per call: Trainer.transaction's defer), which also zeroes
        # the state of a fit's new optimizer (Trainer.reset_optimizer)
        cluster = contextlib.nullcontext() if source is None else source.plugged_into(trainer)
        with trainer.transaction(defer=source is None), cluster:
            trainer.batch_size = batch
            # sklearn's alpha / (2 sw_sum) per batch == trainer l2/2 with l2 = alpha/sw_sum.
            trainer.l2 = p["alpha"] / (batch * mean_w)
            if not done_before:   # resumed: all of these as the checkpoint saved them
                self._configure(trainer, rng, early_stopping, incremental)
            # n_threads: steps run on this thread alone (serial_step) with no
            # validation to score and no callback (which sees numba's pool set
            # to n_threads) enter no parallel region, so numba's thread count
            # is left alone (setting it and back cost about 7 us of a 120 us
            # spiral partial_fit call; as _forward for a few rows)
            if source is None and (val is not None or p["callbacks"]
                                   or not serial_step(trainer.network, batch)):
                threads = num_threads(self.n_threads)
            else:
                threads = contextlib.nullcontext()
            try:
                if epochs > 0:
                    with threads:
                        trainer._fit_checked(X, T, w_full, epochs, val, p["callbacks"],
                                             progress=bool(self.verbose),
                                             checkpoint=checkpoint,
                                             checkpoint_every=int(self.checkpoint_every),
                                             owner=owner, restart_order=not done_before)
                else:   # resumed from a checkpoint of a run that had finished
                    trainer.epochs_run, trainer.stop_reason = 0, resumed_reason
                trainer.epochs_run += done_before
            except FloatingPointError:   # (NaN or inf in X: the trainer's ValueError)
                raise ValueError("Solver produced non-finite parameter weights. The input "
                                 "data may contain large values and need to be preprocessed "
                                 "(or lower learning_rate_init).") from None
        if not incremental and trainer.stop_reason is None:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        if checkpoint is not None and not trainer.interrupted and os.path.exists(checkpoint):
            os.unlink(checkpoint)   # the run is complete: the estimator holds its result
        return trainer, rng

    def _fit_random_state(self):
        """check_random_state(random_state) for a fit: with an int seed a
        generator in the state RandomState(seed) starts in.

        Each estimator has two such generators and alternates between them:
        the one the last committed fit uses (self._rng, which partial_fit
        continues) is never touched, the other one is reset to the seed's
        start (epoch_order.seeded_random_state).  So a warm-started fit in a
        loop does not seed a new generator per call, and a call that raises
        still leaves self._rng as it was.  The pair is kept beside the
        estimator (_OWN_RNGS), not in it: its attributes change only when a
        call succeeds."""
        seed = self.random_state
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            return _check_random_state(seed)
        pair = _OWN_RNGS.setdefault(self, [None, None])
        slot = 1 if pair[0] is not None and pair[0] is self.__dict__.get("_rng") else 0
        pair[slot] = seeded_random_state(seed, recycle=pair[slot])
        return pair[slot]

    def _configure(self, trainer, rng, early_stopping, incremental):
        """scikit-learn's schedule, optimizer, shuffling and stopping rule on
        ``trainer`` for this call."""
        trainer.schedule = self._schedule()
        if not incremental:
            # a (warm-started) fit starts a new optimizer, as scikit-learn's
            trainer.reset_optimizer(self._make_optimizer(float(self.learning_rate_init)))
        if not self.shuffle:
            trainer.order = InOrder()
        elif not (isinstance(trainer.order, RunningShuffle) and trainer.order.rng is rng):
            trainer.order = RunningShuffle(rng)   # partial_fit keeps shuffling with its own
        monitor = "val_score" if early_stopping else "loss"
        if trainer.stopping is None or trainer.stopping.monitor != monitor:
            trainer.stopping = self._stopping(early_stopping)   # new, or switched
        else:   # warm start / partial_fit: the count and best value carry on
            trainer.stopping.tol = float(self.tol)
            trainer.stopping.patience = int(self.n_iter_no_change)

    def _fingerprint(self, X, T, w):
        """What a checkpoint must match to be resumed: the data and every
        parameter that changes the arithmetic (not verbose, callbacks,
        n_threads or the checkpoint settings)."""
        h = hashlib.blake2b(digest_size=16)
        skip = ("verbose", "callbacks", "n_threads", "checkpoint", "checkpoint_every")
        params = {k: repr(v) for k, v in sorted(self.get_params(deep=False).items())
                  if k not in skip}
        h.update(json.dumps(params, sort_keys=True).encode())
        arrays = (*X.fingerprint_arrays(), T, w) if _sparse.is_sparse(X) else (X, T, w)
        for a in arrays:
            h.update(repr((a.shape, a.dtype.str)).encode())
            h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()

    def _resume_checkpoint(self, path, owner, max_epochs):
        """(trainer, epochs already trained, epochs left, "plateau" if the run
        had stopped) from the checkpoint of an interrupted fit of this
        estimator on the same data; ValueError if the file holds another run."""
        trainer, saved = Trainer._resume(path)
        if saved != owner:
            raise ValueError(f"checkpoint {os.fspath(path)!r} holds another run (other data, "
                             "parameters or estimator); delete it or choose another path")
        done = len(trainer.history)
        left = max(0, max_epochs - done)
        reason = None
        stopping = trainer.stopping
        # the stopping decision of the checkpoint's last epoch, which the
        # interrupted run made after writing it
        if left and stopping is not None and stopping.exhausted:
            if trainer.schedule.on_plateau(trainer.optimizer):
                stopping.count = 0
            else:
                left, reason = 0, "plateau"
        return trainer, done, left, reason

    def _trainer_from_fitted(self):
        """A trainer continuing a model read from a file (which keeps no
        optimizer state): a fresh optimizer, the counters, curve and stopping
        state from the fitted attributes."""
        trainer = Trainer(self._network, shuffle=False,
                          optimizer=self._make_optimizer(float(self.learning_rate_init)))
        trainer.samples_seen = int(self.t_)
        trainer.history.loss.extend(self.loss_curve_)
        trainer.history.accuracy.extend([None] * len(self.loss_curve_))   # not saved
        validating = self.validation_scores_ is not None
        trainer.stopping = self._stopping(validating)
        if validating:
            trainer.history.val_score.extend(self.validation_scores_)
        best = self.best_validation_score_ if validating else self.best_loss_
        trainer.stopping.set_state({"best": best, "count": self._no_improvement_count})
        return trainer

    def _check_stochastic_solver(self):
        """partial_fit's availability (scikit-learn's check and wording): with
        solver='lbfgs' the estimator has no partial_fit (``hasattr`` is False)."""
        if self.solver == "lbfgs":   # other bad values: fit's ValueError naming solver
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 "lbfgs is not stochastic.")
        return True

    def _fit_lbfgs(self, X, target, w, p, reuse, names):
        """solver='lbfgs': scikit-learn's ``_fit_lbfgs`` on fastnn's compiled step.

        One batch of all rows; the objective is scikit-learn's, mean loss +
        alpha / (2 sw_sum) * sum ||W||^2 (sw_sum: the summed sample weight, the
        row count without weights), minimised by fastnn.lbfgs on a copy of the
        network.  Committed as scikit-learn does: ``n_iter_`` (capped at
        max_iter), ``loss_``, ``t_`` (0 on a fresh fit, else unchanged);
        ``loss_curve_``, ``best_loss_``, ``validation_scores_`` and
        ``best_validation_score_`` are not set (a warm start keeps an earlier
        stochastic fit's).  Early stopping, batch_size, shuffle and the
        learning-rate settings do not apply.  ``callbacks`` are called after
        each iteration with ``epoch`` (the iteration), ``loss`` and ``network``.
        Ctrl-C propagates and leaves the estimator as it was (the run is on a copy).
        """
        from .lbfgs import convergence_message, minimize_lbfgs
        T = target["T"]
        rng = _check_random_state(self.random_state)
        net = self._network.copy() if reuse else self._build_network(
            X.shape[1], T.shape[1], p, rng, target["output_name"])
        sw_sum = float(X.shape[0]) if w is None else float(w.sum())
        w_net = unit_weights(X.shape[0], net.dtype) if w is None else w.astype(net.dtype)

        def callback(iteration, loss):
            logs = {"epoch": iteration, "loss": loss, "network": net}
            return any(bool(cb(logs)) for cb in p["callbacks"])

        with num_threads(self.n_threads):
            res = minimize_lbfgs(net, X, T, w_net, l2=p["alpha"] / sw_sum,
                                 max_iter=self.max_iter, max_fun=self.max_fun, tol=self.tol,
                                 verbose=bool(self.verbose),
                                 callback=callback if p["callbacks"] else None)
        if not np.isfinite(net.params).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data "
                             "may contain large values and need to be preprocessed.")
        if not res.converged and not res.stopped:
            warnings.warn(convergence_message(res, int(self.max_iter)), ConvergenceWarning)
        t = self.t_ if reuse else 0
        if not reuse:
            for k in _STOCHASTIC_ONLY:   # a new lbfgs model has none of them
                if hasattr(self, k):
                    delattr(self, k)
        self._trainer = None     # no stochastic-solver state to continue
        self._rng = rng
        self._publish(net, target, names)
        self.n_iter_ = min(res.n_iter, int(self.max_iter))
        self.t_ = t
        self.loss_ = res.loss
        return self


    def _commit(self, trainer, rng, target, names):
        """Publish a successful run's results (nothing before this touches self)."""
        history = trainer.history
        stopping = trainer.stopping
        continued = self.__dict__.get("_trainer") is trainer
        self._trainer = trainer
        self._rng = rng
        self._publish(trainer.network, target, names)
        self.n_iter_ = trainer.epochs_run
        self.t_ = trainer.samples_seen
        self.loss_curve_ = _follow(self.__dict__.get("loss_curve_") if continued else None,
                                   history.loss)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else None
        validating = stopping.monitor == "val_score"
        self.best_loss_ = None if validating else stopping.best
        self.validation_scores_ = _follow(
            self.__dict__.get("validation_scores_") if continued else None,
            history.val_score) if validating else None
        self.best_validation_score_ = stopping.best if validating else None
        self._no_improvement_count = stopping.count

    def _publish(self, net, target, names):
        """The fitted model's own attributes (whatever the solver)."""
        self._network = net
        if getattr(self, "_views_of", None) is not net:   # partial_fit: the same views
            self.coefs_ = net.weights
            self.intercepts_ = net.biases
            self._views_of = net
        self.n_features_in_ = net.sizes[0]
        self.n_layers_ = len(net.sizes)
        self.n_outputs_ = target["n_outputs"]
        self.out_activation_ = target["out_activation"]
        for key, value in target.get("fitted", {}).items():
            setattr(self, key, value)
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    # ------------------------------------------------------ persistence
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") \
            else self.__dict__.copy()
        state = dict(state)
        state.pop("coefs_", None)       # views into the network: rebuilt on load
        state.pop("intercepts_", None)
        state.pop("_views_of", None)
        return state

    def __setstate__(self, state):
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        if "_network" in self.__dict__:
            self.coefs_ = self._network.weights
            self.intercepts_ = self._network.biases

    def save(self, path):
        """Write the fitted estimator to ``path`` in fastnn's model format
        (``.npz`` + JSON header, no pickle, written atomically); see
        :mod:`fastnn._estimator_io`."""
        save_estimator(self, path)

    @classmethod
    def load(cls, path):
        """An estimator read from a file written by :meth:`save`; raises
        ModelFileError on a file that is not one (or holds another estimator)."""
        return load_estimator(path, classes=_CLASSES, expected=cls)

    def to_sklearn(self):
        """A fitted ``sklearn.neural_network`` MLPClassifier / MLPRegressor with
        this model's weights, which predicts the same; ValueError when
        scikit-learn cannot represent it (one activation per hidden layer).
        See :mod:`fastnn.sklearn_convert`."""
        from .sklearn_convert import to_sklearn
        return to_sklearn(self)

    @classmethod
    def from_sklearn(cls, sk_model, dtype=None):
        """This estimator with the weights of a fitted scikit-learn MLP, ready to
        predict or to train on (``partial_fit``, ``warm_start``); ``dtype``
        defaults to that of its weights.  See :mod:`fastnn.sklearn_convert`."""
        from .sklearn_convert import from_sklearn
        return from_sklearn(cls, sk_model, dtype=dtype)


# ------------------------------------------------------------ classifier
class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, a drop-in for scikit-learn's.

    Same parameters as ``sklearn.neural_network.MLPClassifier`` (solver
    'adam', 'sgd' or 'lbfgs', which needs scipy), plus:

    dtype : 'float32' (default) or 'float64', the arithmetic of training and
        prediction.
    n_threads : int or None, numba threads during fit / predict (None: all).
    activation : a name or a list of names, one per hidden layer.
    class_weight : None, 'balanced' or a dict label -> weight, multiplied
        into ``sample_weight``.
    callbacks : functions ``f(logs)`` called after each epoch with a dict
        (``epoch``, ``loss``, ``accuracy`` (on the training rows during the
        epoch), ``learning_rate``, ``validation_score`` when early stopping,
        ``network``); returning True stops training.

    Binary targets train one logistic output, multi-class ones a softmax,
    a 2-D 0/1 ``y`` (multi-label) one logistic output per label.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000, dtype="float32", n_threads=None,
                 callbacks=None, checkpoint=None, checkpoint_every=10, class_weight=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, dtype=dtype, n_threads=n_threads, callbacks=callbacks,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        self.class_weight = class_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = True   # scipy.sparse X (fastnn.sparse)
        return tags

    def _encode_targets(self, y, n, dtype, reuse, incremental, classes):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected. "
                          "Please change the shape of y to (n_samples, ), for example "
                          "using ravel().", DataConversionWarning, stacklevel=4)
            y = y.ravel()
        if y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"[{n}, {y.shape[0]}]")
        if y.ndim == 2:
            if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
                raise ValueError("Unknown label type: a 2-D y must be a 0/1 multi-label "
                                 "indicator matrix (multiclass-multioutput is not "
                                 "supported)")
            labels = np.arange(y.shape[1])
            kind = "multilabel"
        elif y.ndim == 1:
            if y.dtype.kind == "f":
                if not np.isfinite(y).all():
                    raise ValueError("Input y contains NaN or infinity.")
                if np.any(y != np.round(y)):
                    raise ValueError("Unknown label type: continuous. Classification "
                                     "needs discrete labels (use MLPRegressor for "
                                     "continuous targets).")
            if y.dtype.kind == "O":
                kinds = {type(v) for v in y}
                if len({str in k.__mro__ for k in kinds}) > 1:
                    raise ValueError("Unknown label type: y mixes strings and numbers")
            kind = None
            if reuse and incremental and self._kind != "multilabel":
                # partial_fit on a fitted model: each label looked up in
                # classes_ once (no np.unique / np.isin per call)
                return self._targets_of_known_labels(y, n, dtype)
            try:
                labels = np.unique(y)
            except TypeError as exc:
                raise ValueError(f"Unknown label type: labels cannot be sorted ({exc})") \
                    from None
        else:
            raise ValueError(f"y must be 1-D labels or a 2-D indicator matrix; got shape "
                             f"{y.shape}")
        if reuse:
            known = self.classes_
            if kind == "multilabel" or self._kind == "multilabel":
                if kind != self._kind or len(labels) != len(known):
                    raise ValueError("y does not match the labels of the previous fit")
            elif incremental:
                if not np.isin(labels, known).all():
                    raise ValueError(f"y holds labels {np.setdiff1d(labels, known)} that "
                                     f"are not in classes_ {known}")
            elif not np.array_equal(labels, known):
                raise ValueError("warm_start can only be used where `y` has the same "
                                 "classes as in the previous call to fit. Previously got "
                                 f"{known}, `y` has {labels}")
            classes_ = known
            kind = self._kind
        else:
            if incremental and kind != "multilabel":
                if classes is None:
                    raise ValueError("classes must be passed on the first call to "
                                     "partial_fit.")
                classes_ = np.unique(np.asarray(classes))
                if not np.isin(labels, classes_).all():
                    raise ValueError(f"`classes={classes_}` does not hold every label of y "
                                     f"({labels})")
            else:
                classes_ = labels
            if kind != "multilabel":
                if len(classes_) < 2:
                    raise ValueError(f"{type(self).__name__} needs samples of at least 2 "
                                     f"classes in the data, but the data contains only 1 "
                                     f"class: {classes_[0]!r}")
                kind = "binary" if len(classes_) == 2 else "multiclass"
        if kind == "multilabel":
            return _label_target(kind, classes_, None, np.ascontiguousarray(y, dtype=dtype),
                                 y.shape[1], y.dtype)
        return _label_target(kind, classes_, *_one_hot(np.searchsorted(classes_, y), kind,
                                                       len(classes_), dtype))

    def _targets_of_known_labels(self, y, n, dtype):
        """_encode_targets for partial_fit on a fitted (not multi-label) model."""
        known = self.classes_
        if (known.dtype.kind in "iu" and y.dtype.kind in "iu" and known[0] == 0
                and known[-1] == len(known) - 1 and y.min() >= 0):
            # classes_ is 0..k-1: the labels are their own positions (two
            # NumPy calls, where the lookup below takes four); one past the
            # last raises in _one_hot and is then named below (as a uint64
            # label that take cannot cast)
            try:
                return _label_target(self._kind, known,
                                     *_one_hot(y, self._kind, len(known), dtype))
            except (IndexError, TypeError):
                pass
        try:
            idx = np.searchsorted(known, y)
        except TypeError as exc:
            raise ValueError(f"Unknown label type: labels cannot be sorted ({exc})") from None
        found = known.take(idx, mode="clip") == y   # idx = len(known) past the last
        if not found.all():
            raise ValueError(f"y holds labels {np.unique(y[~found])} that are not in "
                             f"classes_ {known}")
        return _label_target(self._kind, known, *_one_hot(idx, self._kind, len(known), dtype))

    def _apply_class_weight(self, w, target, incremental):
        cw = self.class_weight
        if cw is None:
            return w
        if target["kind"] == "multilabel":
            raise ValueError("class_weight is not supported for multi-label y")
        classes = target["fitted"]["classes_"]
        idx = target["indices"]
        if isinstance(cw, str) and cw == "balanced":
            if incremental:
                raise ValueError("class_weight='balanced' needs the whole data set; pass a "
                                 "dict to partial_fit")
            counts = np.bincount(idx, minlength=len(classes)).astype(np.float64)
            per_class = np.where(counts > 0, len(idx) / (len(classes) *
                                                         np.maximum(counts, 1)), 0.0)
        elif isinstance(cw, dict):
            per_class = np.ones(len(classes))
            for label, weight in cw.items():
                hit = np.flatnonzero(classes == label) if np.ndim(classes == label) else []
                if len(hit) == 0:
                    raise ValueError(f"class_weight names label {label!r}, not in "
                                     f"classes_ {classes}")
                per_class[hit[0]] = V.check_float(weight, f"class_weight[{label!r}]",
                                                  low=0.0)
        else:
            raise ValueError(f"class_weight must be None, 'balanced' or a dict; got {cw!r}")
        cwv = per_class[idx]
        w = cwv if w is None else w * cwv
        if w.sum() <= 0:
            raise ValueError("class_weight and sample_weight leave no positive weight")
        return w

    @available_if(_BaseMLP._check_stochastic_solver)   # none with solver='lbfgs'
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current state (optimizer
        included).  ``classes`` (every label) is required on the first call."""
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy (exact match for multi-label), weighted by
        ``sample_weight``; on Dask input computed on the workers."""
        if _is_dask(X, y, sample_weight):
            from . import distributed
            return distributed.score(self, X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes) (labels for multi-label)."""
        if _is_dask(X):
            return _dask_predict(self, X, "predict_proba")
        out = self._forward(X)
        if self._kind == "binary":
            p = out[:, 0]
            return np.column_stack([1 - p, p])
        return out

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        if _is_dask(X):
            return _dask_predict(self, X, "predict_log_proba")
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted labels (from ``classes_``), or the 0/1 matrix for multi-label."""
        if _is_dask(X):
            return _dask_predict(self, X, "predict")
        out = self._forward(X)
        if self._kind == "multilabel":
            return (out > 0.5).astype(self._label_dtype)
        if self._kind == "binary":
            return self.classes_[(out[:, 0] > 0.5).astype(np.int64)]
        return self.classes_[out.argmax(axis=1)]


# ------------------------------------------------------------- regressor
class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (squared error, identity output), a
    drop-in for scikit-learn's; parameters as :class:`MLPClassifier` without
    ``class_weight``.  ``y`` may be 1-D or 2-D (several outputs)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True   # scipy.sparse X (fastnn.sparse)
        return tags

    def _encode_targets(self, y, n, dtype, reuse, incremental, classes):
        y = np.asarray(y)
        if y.dtype.kind == "O":
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"y must hold numbers ({exc})") from None
        if y.dtype.kind not in "biuf":
            raise ValueError(f"y must hold numbers; got dtype {y.dtype}")
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples "
                             f"or a bad y shape: X has {n} rows, y has shape {y.shape}")
        T = np.ascontiguousarray(y.reshape(n, -1), dtype=dtype)
        if not np.isfinite(T).all():
            raise ValueError("Input y contains NaN or infinity.")
        if reuse and T.shape[1] != self._network.sizes[-1]:
            raise ValueError(f"y has {T.shape[1]} outputs; the fitted model has "
                             f"{self._network.sizes[-1]}")
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        return {"T": T, "indices": None, "n_outputs": n_outputs, "kind": "regression",
                "out_activation": "identity", "output_name": "linear", "fitted": {}}

    def _apply_class_weight(self, w, target, incremental):
        return w

    @available_if(_BaseMLP._check_stochastic_solver)   # none with solver='lbfgs'
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def score(self, X, y, sample_weight=None):
        """R^2 (averaged over outputs), weighted by ``sample_weight``; on Dask
        input computed on the workers."""
        if _is_dask(X, y, sample_weight):
            from . import distributed
            return distributed.score(self, X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def predict(self, X):
        """Predicted values: shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        if _is_dask(X):
            return _dask_predict(self, X, "predict")
        # float64 like scikit-learn's regressors, whatever the training dtype.
        out = self._forward(X).astype(np.float64)
        return out.ravel() if self.n_outputs_ == 1 and out.shape[1] == 1 else out


# the saved class names (fastnn._estimator_io reads files of both)
_CLASSES = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}
