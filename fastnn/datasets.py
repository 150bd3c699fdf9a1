"""Data: the spiral of the derivation notes, and readers for the user's own files."""
import os
import warnings

import numpy as np


def spiral(n_per_class=100, n_classes=3, noise=0.2, seed=0, dtype="float32"):
    """K interleaved spiral arms in 2-D (the data of the derivation notes).

    Returns X (n_per_class * n_classes, 2) and integer labels y.  With the
    defaults: 300 points, 3 classes, not linearly separable.
    """
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    X = np.empty((n, 2), dtype=np.float64)
    y = np.empty(n, dtype=np.int64)
    for k in range(n_classes):
        rows = slice(n_per_class * k, n_per_class * (k + 1))
        radius = np.linspace(0.0, 1.0, n_per_class)
        theta = (np.linspace(k * 4.0, (k + 1) * 4.0, n_per_class)
                 + rng.standard_normal(n_per_class) * noise)
        X[rows] = np.c_[radius * np.sin(theta), radius * np.cos(theta)]
        y[rows] = k
    return X.astype(dtype), y


def read_csv_matrix(path, delimiter=",", skip_header=None):
    """Every column of a numeric CSV file as one float64 matrix (rows x columns).

    A first row that is not numeric is taken as a header and skipped (unless
    ``skip_header`` says otherwise).  Raises ValueError naming the file and
    the line for an empty or non-numeric field, rows of different lengths,
    a file that is not text or has no data rows.
    """
    path = os.fspath(path)
    try:
        if skip_header is None:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline()
            try:
                [float(v) for v in first.strip().split(delimiter)]
                skip_header = False
            except ValueError:
                skip_header = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "Empty input file": reported below
            data = np.genfromtxt(path, delimiter=delimiter,
                                 skip_header=1 if skip_header else 0, dtype=np.float64,
                                 ndmin=2, encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text (CSV) file") from None
    except ValueError as exc:   # genfromtxt: rows with different numbers of columns
        detail = " ".join(str(exc).split()).replace("Some errors were detected ! ", "")
        raise ValueError(f"{path}: rows have different numbers of columns ({detail})") \
            from None
    if data.size == 0:
        header = " (its first line is not numeric, so it was taken as a header)" \
            if skip_header else ""
        raise ValueError(f"{path}: no data rows{header}")
    if np.isnan(data).any():
        row = int(np.argwhere(np.isnan(data))[0][0]) + 1 + int(skip_header)
        raise ValueError(f"{path}: line {row} has an empty or non-numeric field")
    return data


def load_csv(path, label_column=-1, delimiter=",", skip_header=None):
    """Read a numeric CSV file: features from every column but ``label_column``.

    A first row that is not numeric is taken as a header and skipped (unless
    ``skip_header`` says otherwise).  Returns (X float64, y); y is int64 when
    every label is a whole number.
    """
    data = read_csv_matrix(path, delimiter=delimiter, skip_header=skip_header)
    col = label_column % data.shape[1]
    X = np.delete(data, col, axis=1)
    y = data[:, col]
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return X, y


def load_npz(path, x_key="X", y_key="y"):
    """Read arrays ``X`` and ``y`` from an .npz file (no pickled objects allowed)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        missing = [k for k in (x_key, y_key) if k not in data.files]
        if missing:
            raise KeyError(f"{path}: no array named {missing[0]!r}; it holds {data.files}")
        return data[x_key], data[y_key]


def load(source):
    """Load a data set by name ('spiral') or from a .csv / .npz path."""
    if source == "spiral":
        return spiral()
    lower = str(source).lower()
    if lower.endswith(".csv"):
        return load_csv(source)
    if lower.endswith(".npz"):
        return load_npz(source)
    raise ValueError(f"data must be 'spiral', a .csv file or a .npz file; got {source!r}")
