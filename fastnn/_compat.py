"""scikit-learn base classes when scikit-learn is installed, small stand-ins otherwise.

fastnn runs without scikit-learn.  When it is importable, the estimators
inherit from its BaseEstimator / ClassifierMixin / RegressorMixin, so tags,
``clone``, ``Pipeline``, ``GridSearchCV``, HTML repr and the estimator checks
all see a genuine scikit-learn estimator, and its exception and warning classes
are used so that ``except NotFittedError`` works as users expect.  Without
scikit-learn the fallbacks below give the same public behaviour the estimators
rely on: ``get_params`` / ``set_params`` read from the ``__init__`` signature,
and ``score`` (accuracy, R^2).
"""
import functools
import inspect
import types

import numpy as np

from ._metrics import r2_score  # noqa: F401  (re-exported for the estimators)

try:  # pragma: no cover - which branch runs depends on the environment
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    from sklearn.utils.metaestimators import available_if
    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover
    HAVE_SKLEARN = False

    class _AvailableIf:
        """The method while ``check(obj)`` holds; otherwise reading the attribute
        raises AttributeError (chained from the check's own error, if any)."""

        def __init__(self, fn, check):
            self.fn, self.check = fn, check
            functools.update_wrapper(self, fn)

        def __get__(self, obj, owner=None):
            if obj is None:
                return self.fn
            missing = f"This {type(obj).__name__!r} has no attribute {self.fn.__name__!r}"
            try:
                available = self.check(obj)
            except Exception as exc:
                raise AttributeError(missing) from exc
            if not available:
                raise AttributeError(missing)
            return types.MethodType(self.fn, obj)

    def available_if(check):
        """Decorator: the method exists only while ``check(self)`` is true (as
        scikit-learn's ``available_if``; ``hasattr`` then says False)."""
        return lambda fn: _AvailableIf(fn, check)

    class NotFittedError(ValueError, AttributeError):
        """The estimator is used before ``fit``."""

    class ConvergenceWarning(UserWarning):
        """The solver stopped at max_iter before converging."""

    class DataConversionWarning(UserWarning):
        """The input was converted (e.g. a column vector y raveled)."""

    class BaseEstimator:
        """get_params / set_params from the ``__init__`` signature (as scikit-learn)."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep=True):
            """The constructor parameters as a dict."""
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            """Set constructor parameters; unknown names raise ValueError."""
            valid = self._get_param_names()
            for name in params:
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for estimator "
                                     f"{type(self).__name__}. Valid parameters are: {valid}")
            for name, value in params.items():
                setattr(self, name, value)
            return self

        def __repr__(self):
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class ClassifierMixin:
        """``score`` = (weighted) accuracy; exact match for multi-label."""

        _estimator_type = "classifier"

        def score(self, X, y, sample_weight=None):
            """Mean accuracy of ``predict(X)`` against ``y``."""
            pred = self.predict(X)
            y = np.asarray(y)
            hit = pred == y.reshape(pred.shape)
            if hit.ndim == 2:
                hit = hit.all(axis=1)
            return float(np.average(hit, weights=sample_weight))

    class RegressorMixin:
        """``score`` = coefficient of determination R^2 (averaged over outputs)."""

        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None):
            """R^2 of ``predict(X)`` against ``y``."""
            pred = np.asarray(self.predict(X), dtype=np.float64)
            y = np.asarray(y, dtype=np.float64).reshape(pred.shape)
            if pred.ndim == 1:
                pred, y = pred[:, None], y[:, None]
            w = None if sample_weight is None else np.asarray(sample_weight, float)
            return r2_score(y, pred, w)

__all__ = ["HAVE_SKLEARN", "r2_score", "BaseEstimator", "ClassifierMixin", "RegressorMixin",
           "NotFittedError", "ConvergenceWarning", "DataConversionWarning", "available_if"]
