"""Saving and loading networks without pickle.

Format (version 1): a NumPy .npz archive holding

* ``params``: the flat parameter buffer (float32 or float64),
* ``meta``:   UTF-8 JSON bytes (uint8) with ``format`` = "fastnn", ``kind``
  ("network", or "checkpoint" for a training checkpoint, which adds the
  optimizer state arrays ``state1`` and ``state2``), ``version``, ``sizes``,
  ``activations``, ``output``, ``dtype``, ``n_params`` and an ``extra`` dict
  (used by the estimators for classes and settings, by checkpoints for the
  trainer's state).

Files are read with ``allow_pickle=False``, so loading never runs code, and
written to a temporary file in the target directory that is then renamed over
the target, so a crash never leaves a half-written file behind.
"""
import json
import os
import tempfile

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
        # mkstemp makes the file owner-only; give it the mode open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def network_meta(network, kind="network", extra=None):
    """The JSON header describing ``network``."""
    return {"format": FORMAT, "kind": kind, "version": VERSION, "sizes": list(network.sizes),
            "activations": list(network.activations), "output": network.output,
            "dtype": network.dtype.name, "n_params": network.n_params,
            "extra": extra or {}}


def write_archive(path, meta, arrays):
    """Write ``arrays`` (name -> ndarray) and the JSON ``meta`` atomically."""
    meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, meta=meta_bytes, **arrays))


def read_archive(path, kind, names):
    """(meta, arrays) of a fastnn archive of ``kind`` holding exactly ``names``
    plus ``meta``, with the network it describes; ModelFileError otherwise."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc})") from None
    if magic != b"PK\x03\x04":
        raise ModelFileError(f"{path}: not a readable fastnn {kind} file (not an .npz "
                             "archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise ModelFileError(f"{path}: not a fastnn file (no header; it holds "
                                     f"arrays {data.files})")
            meta = _parse_meta(path, data["meta"], kind)
            if sorted(data.files) != sorted([*names, "meta"]):
                raise ModelFileError(f"{path}: a fastnn {kind} holds arrays "
                                     f"{sorted([*names, 'meta'])}; this one holds {data.files}")
            arrays = {name: data[name] for name in names}
    except ModelFileError:
        raise
    except Exception as exc:  # zip, zlib, header and I/O errors all mean: unreadable
        raise ModelFileError(f"{path}: not a readable fastnn {kind} file "
                             f"({type(exc).__name__}: {exc})") from None
    n_params = _declared_n_params(path, meta)
    for name, arr in arrays.items():   # before building anything of that size
        if arr.shape != (n_params,):
            raise ModelFileError(f"{path}: array {name!r} has shape {arr.shape}; the header "
                                 f"promises ({n_params},)")
    net = _network_from_meta(path, meta)
    for name, arr in arrays.items():
        if arr.dtype != net.dtype:
            raise ModelFileError(f"{path}: array {name!r} has dtype {arr.dtype} and shape "
                                 f"{arr.shape}; the header promises {net.dtype.name} "
                                 f"({net.n_params},)")
        if not np.isfinite(arr).all():
            raise ModelFileError(f"{path}: array {name!r} contains NaN or infinity")
    return meta, net, arrays


def save(network, path, extra=None):
    """Write ``network`` (and a JSON-serialisable ``extra`` dict) to ``path``."""
    write_archive(path, network_meta(network, extra=extra), {"params": network.params})


def load(path, return_extra=False):
    """Read a network written by :func:`save`; raises ModelFileError on a file
    that is not one (truncated, corrupted, other format or newer version)."""
    meta, net, arrays = read_archive(path, "network", ["params"])
    net.params[:] = arrays["params"]
    return (net, meta["extra"]) if return_extra else net


def _parse_meta(path, meta_arr, kind):
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        raise ModelFileError(f"{path}: header has dtype {meta_arr.dtype}, expected uint8 JSON")
    try:
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fastnn file (format tag missing)")
    if meta.get("version") != VERSION:
        raise ModelFileError(f"{path}: format version {meta.get('version')!r}; this fastnn "
                             f"reads version {VERSION}")
    if meta.get("kind", "network") != kind:
        raise ModelFileError(f"{path}: holds a fastnn {meta.get('kind')!r}, expected a {kind}")
    if not isinstance(meta.get("extra", {}), dict):
        raise ModelFileError(f"{path}: header field 'extra' must be an object")
    meta.setdefault("extra", {})
    return meta


def _declared_n_params(path, meta):
    """The parameter count the header's layer sizes imply (checked, no allocation)."""
    sizes = meta.get("sizes")
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
        raise ModelFileError(f"{path}: header field 'sizes' must list >= 2 positive integers")
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if meta.get("n_params") != n_params:
        raise ModelFileError(f"{path}: header's n_params {meta.get('n_params')!r} does not "
                             f"match its layer sizes ({n_params})")
    return n_params


def _network_from_meta(path, meta):
    try:
        net = Network(meta["sizes"], activation=meta["activations"], output=meta["output"],
                      dtype=meta["dtype"], seed=0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: header describes no valid network ({exc})") from None
    return net
