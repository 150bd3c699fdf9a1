"""The one place where the suite names fastnn's kernels.

If a kernel is renamed or its signature changes, update it here only.  A name
that does not resolve becomes None, and the benchmarks that need it skip (they
raise NotImplementedError in setup), so comparing against an older or newer
commit never fails just because a name moved.
"""
import importlib


def _get(module, name):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


# The three training products as the step performs them, packing included
# (fastnn.kernels.gemm): z = a W, G += a^T d (a read transposed in place),
# out = d W^T (W^T packed first).
product_forward = _get("fastnn.kernels.gemm", "product_forward")
product_weight_grad = _get("fastnn.kernels.gemm", "product_weight_grad")
product_backward = _get("fastnn.kernels.gemm", "product_backward")
# the GEMM core: gemm(A, B, C, accumulate, mode, code, bias, H), C (+)= A B
gemm = _get("fastnn.kernels.gemm", "gemm")
# Z = h(Z + b) in place; code selects h
add_bias_activate = _get("fastnn.kernels.activations", "add_bias_activate")
# delta *= h'(z), from A = h(z)
scale_by_derivative = _get("fastnn.kernels.activations", "scale_by_derivative")
# Z becomes the softmax cross-entropy delta in place; returns (loss, correct)
softmax_xent_grad = _get("fastnn.kernels.losses", "softmax_xent_grad")

# activation codes (fastnn.kernels.activations.CODES)
_codes = _get("fastnn.kernels.activations", "CODES") or {}
ACT_CODES = {name: _codes[name] for name in ("relu", "sigmoid", "tanh") if name in _codes}


def require(*fns):
    """Skip the calling benchmark (NotImplementedError in setup) if a kernel is missing."""
    if any(f is None for f in fns):
        raise NotImplementedError("kernel not available in this commit")
