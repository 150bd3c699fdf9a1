"""Saving and loading networks without pickle.

Format (version 1): a NumPy .npz archive holding two arrays,

* ``params``: the flat parameter buffer (float32 or float64),
* ``meta``:   UTF-8 JSON bytes (uint8) with ``format`` = "fastnn", ``version``,
  ``sizes``, ``activations``, ``output``, ``dtype``, ``n_params`` and an
  optional ``extra`` dict (used by the estimators for classes and settings).

Files are read with ``allow_pickle=False``, so loading never runs code, and
written to a temporary file in the target directory that is then renamed over
the target, so a crash never leaves a half-written model behind.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .network import Network

FORMAT = "fastnn"
VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a readable fastnn model."""


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it
    to ``path`` (atomic on POSIX and Windows).  Nothing is left on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(network, path, extra=None):
    """Write ``network`` (and a JSON-serialisable ``extra`` dict) to ``path``."""
    meta = {"format": FORMAT, "version": VERSION, "sizes": list(network.sizes),
            "activations": list(network.activations), "output": network.output,
            "dtype": network.dtype.name, "n_params": network.n_params,
            "extra": extra or {}}
    meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, params=network.params, meta=meta_bytes))


def load(path, return_extra=False):
    """Read a network written by :func:`save`; raises ModelFileError on a file
    that is not one (truncated, corrupted, other format or newer version)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if sorted(data.files) != ["meta", "params"]:
                raise ModelFileError(f"{path}: not a fastnn model (arrays {data.files})")
            meta_arr = data["meta"]
            params = data["params"]
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable fastnn model file ({exc})") from None
    meta = _parse_meta(path, meta_arr)
    net = _network_from_meta(path, meta)
    if params.dtype != net.dtype or params.shape != (net.n_params,):
        raise ModelFileError(f"{path}: parameters have dtype {params.dtype} and shape "
                             f"{params.shape}; the header promises {net.dtype.name} "
                             f"({net.n_params},)")
    if not np.isfinite(params).all():
        raise ModelFileError(f"{path}: parameters contain NaN or infinity")
    net.params[:] = params
    return (net, meta["extra"]) if return_extra else net


def _parse_meta(path, meta_arr):
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        raise ModelFileError(f"{path}: header has dtype {meta_arr.dtype}, expected uint8 JSON")
    try:
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fastnn model (format tag missing)")
    if meta.get("version") != VERSION:
        raise ModelFileError(f"{path}: format version {meta.get('version')!r}; this fastnn "
                             f"reads version {VERSION}")
    if not isinstance(meta.get("extra", {}), dict):
        raise ModelFileError(f"{path}: header field 'extra' must be an object")
    meta.setdefault("extra", {})
    return meta


def _network_from_meta(path, meta):
    try:
        net = Network(meta["sizes"], activation=meta["activations"], output=meta["output"],
                      dtype=meta["dtype"], seed=0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: header describes no valid network ({exc})") from None
    if meta.get("n_params") != net.n_params:
        raise ModelFileError(f"{path}: header's n_params {meta.get('n_params')!r} does not "
                             f"match its layer sizes ({net.n_params})")
    return net
