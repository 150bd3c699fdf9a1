"""fastnn: train multilayer perceptrons on the CPU with Numba-compiled kernels."""
from ._estimator_io import load_estimator
from .datasets import load_csv, load_npz, spiral
from .io import ModelFileError, load, save
from .estimators import MLPClassifier, MLPRegressor
from .network import Network
from .optimizers import SGD, Adam
from .plotting import plot_history
from .trainer import History, Trainer, train

__version__ = "0.1.0"

__all__ = ["Network", "Trainer", "History", "train", "SGD", "Adam",
           "spiral", "load_csv", "load_npz", "save", "load", "ModelFileError",
           "MLPClassifier", "MLPRegressor", "load_estimator", "plot_history",
           "__version__"]
