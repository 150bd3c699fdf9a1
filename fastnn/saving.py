"""``fastnn.save`` and ``fastnn.load``: the one entry point for model files.

Networks and fitted estimators share one file format (:mod:`fastnn.io`: an
``.npz`` with the flat parameters and a JSON header, no pickle, written
atomically); an estimator's header adds its settings and fitted attributes
(:mod:`fastnn._estimator_io`).  ``load`` returns what was saved.  A
training run's full state is a checkpoint instead (``Trainer.fit(checkpoint=)``,
``Trainer.resume``).
"""
from . import _estimator_io, io
from .network import Network


def _estimator_classes():
    # imported on demand: the estimators import scikit-learn, which is slow
    from .estimators import MLPClassifier, MLPRegressor
    return {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}


def save(obj, path, extra=None):
    """Write a :class:`Network` or a fitted ``MLPClassifier`` / ``MLPRegressor``
    to ``path``.  ``extra``: a JSON-serialisable dict stored with a network."""
    if isinstance(obj, Network):
        io.save(obj, path, extra=extra)
        return
    if isinstance(obj, tuple(_estimator_classes().values())):
        if extra is not None:
            raise TypeError("extra is only stored with a bare Network; an estimator "
                            "saves its own settings")
        _estimator_io.save_estimator(obj, path)
        return
    raise TypeError(f"fastnn.save writes a fastnn Network or a fitted fastnn MLPClassifier / "
                    f"MLPRegressor; got {type(obj).__name__} (a Trainer's whole state is "
                    "saved with Trainer.fit(checkpoint=path))")


def load(path):
    """What :func:`save` wrote to ``path``: a Network, or an estimator ready to
    predict.  Raises ModelFileError on a file that is not one."""
    net, extra = io.load(path, return_extra=True)
    if "estimator" in extra:
        return _estimator_io.load_estimator(path, classes=_estimator_classes())
    return net


def load_estimator(path, expected=None):
    """The estimator saved in ``path`` (ModelFileError if it holds a bare
    network, or an estimator of another class than ``expected``)."""
    return _estimator_io.load_estimator(path, expected=expected, classes=_estimator_classes())
