"""fastnn: train multilayer perceptrons on the CPU with Numba-compiled kernels."""
import importlib

from .datasets import load_csv, load_npz, spiral
from .io import ModelFileError
from .network import Network
from .optimizers import SGD, Adam
from .plotting import plot_history
from .saving import load, load_estimator, save
from .trainer import History, Trainer, every, train

__version__ = "0.1.0"

# The estimators build on scikit-learn's base classes when it is installed, and
# importing scikit-learn takes about 0.7 s: load them on first use (PEP 562) so
# that `import fastnn` for the Network/Trainer API stays fast.  ONNX export
# likewise (and `onnx` itself is imported only inside to_onnx).
_LAZY = {"MLPClassifier": "estimators", "MLPRegressor": "estimators",
         "to_onnx": "onnx_export"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


__all__ = ["Network", "Trainer", "History", "train", "every", "SGD", "Adam",
           "spiral", "load_csv", "load_npz", "save", "load", "ModelFileError",
           "MLPClassifier", "MLPRegressor", "load_estimator", "to_onnx", "plot_history",
           "__version__"]
