"""Checks at the public API: clear errors that name the argument, before any work."""
import math
import numbers

import numpy as np

FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype):
    """Return np.float32 or np.float64 for a dtype spec, or raise ValueError."""
    try:
        key = np.dtype(dtype).name
    except TypeError:
        key = None
    if key not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(FLOAT_DTYPES[key])


def check_positive_int(value, name, minimum=1):
    """An int >= minimum (bools refused), returned as a Python int."""
    if type(value) is int and value >= minimum:   # the usual case, before the ABC checks
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(value, name, low=None, high=None, low_open=False, high_open=False):
    """A finite real number within [low, high] (ends open when asked)."""
    if type(value) is not float and (isinstance(value, (bool, np.bool_))
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)   # (np.isfinite on a Python float: 10x slower)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return value


def check_samples_shape(shape, name, n_features=None):
    """A (samples x features) shape with at least one of each, and
    ``n_features`` columns when given (dense and sparse X alike)."""
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {shape}; need at least 1 sample "
                         "and 1 feature")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, but the model expects "
                         f"{n_features}")


def non_finite_error(name, dtype):
    """The ValueError for input ``name`` holding NaN or infinity."""
    return ValueError(f"{name} contains NaN or infinity (or values too large for "
                      f"{np.dtype(dtype).name})")


def as_float_matrix(X, name, dtype, n_features=None, finite=True):
    """X as a C-contiguous 2-D float array of ``dtype``; refuse what cannot be data.

    Lists, int arrays, Fortran-ordered or strided arrays and pandas frames are
    converted; NaN/inf, object or string arrays, empty input and a wrong
    number of dimensions or features raise with the argument's name.
    ``finite=False`` leaves NaN and inf to the caller (prediction checks
    each block of rows in its kernel, Network._forward_checked).
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # e.g. ragged nested lists
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        if arr.dtype.kind == "O":
            if any(v is None for v in arr.flat):
                raise TypeError(f"{name} must hold numbers; got an object array containing "
                                "None (missing values: impute or drop them first)")
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must hold numbers; got an array of dtype object "
                                "with non-numeric entries") from None
        else:
            raise TypeError(f"{name} must hold numbers; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x features); got {arr.ndim}-D "
                         f"with shape {arr.shape}")
    check_samples_shape(arr.shape, name, n_features)
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not out.flags.writeable:
        # numba types read-only arrays (e.g. memory-mapped files) separately and
        # the kernels' workspaces are writable: hand them a private copy.
        out = out.copy()
    if finite and not np.isfinite(out).all():
        raise non_finite_error(name, dtype)
    return out
