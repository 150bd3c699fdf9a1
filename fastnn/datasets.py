"""Data: the spiral of the derivation notes, and readers for the user's own files."""
import os

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


def load_csv(path, label_column=-1, delimiter=",", skip_header=None):
    """Read a numeric CSV file: features from every column but ``label_column``.

    A first row that is not numeric is taken as a header and skipped (unless
    ``skip_header`` says otherwise).  Returns (X float64, y).
    """
    path = os.fspath(path)
    if skip_header is None:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            [float(v) for v in first.strip().split(delimiter)]
            skip_header = False
        except ValueError:
            skip_header = True
    data = np.genfromtxt(path, delimiter=delimiter, skip_header=1 if skip_header else 0,
                         dtype=np.float64, ndmin=2)
    if data.size == 0:
        raise ValueError(f"{path}: no data rows")
    if np.isnan(data).any():
        row = int(np.argwhere(np.isnan(data))[0][0]) + 1 + int(skip_header)
        raise ValueError(f"{path}: line {row} has an empty or non-numeric field")
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
