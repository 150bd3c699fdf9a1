"""One training epoch of a case in each library, behind the same interface.

``make_epoch(lib, case, X, y)`` returns a no-argument callable that trains one
shuffled epoch.  Each library is imported only when asked for, so a missing
optional peer (torch, scikit-learn) costs nothing.
"""
import warnings

import numpy as np

from .cases import LR, MOMENTUM

LIBS = ("fastnn", "fastnn_estimator", "numpy", "torch", "sklearn")


def available(lib):
    """True when ``lib`` can run here (fastnn and numpy always can)."""
    if lib in ("fastnn", "fastnn_estimator", "numpy"):
        return True
    import importlib.util
    mod = {"torch": "torch", "sklearn": "sklearn"}[lib]
    return importlib.util.find_spec(mod) is not None


def _fastnn(case, X, y, threads):
    import fastnn
    net = fastnn.Network(list(case.sizes), activation="relu", seed=0)
    trainer = fastnn.Trainer(net, fastnn.SGD(lr=LR, momentum=MOMENTUM),
                             batch_size=case.batch, seed=0)
    return lambda: trainer.fit(X, y, epochs=1)


def _numpy(case, X, y, threads):
    from .numpy_mlp import NumpyMLP
    net = NumpyMLP.from_sizes(case.sizes, seed=0, lr=LR, momentum=MOMENTUM)
    rng = np.random.default_rng(0)
    return lambda: net.epoch(X, y, case.batch, rng)


def _torch(case, X, y, threads):
    import torch
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(case.sizes[:-1], case.sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(case.sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(Xt.shape[0], generator=gen)
        for s in range(0, Xt.shape[0], case.batch):
            idx = order[s:s + case.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return epoch


def _sklearn(case, X, y, threads):
    from sklearn.neural_network import MLPClassifier
    return _estimator_epoch(MLPClassifier, case, X, y)


def _fastnn_estimator(case, X, y, threads):
    from fastnn import MLPClassifier
    return _estimator_epoch(MLPClassifier, case, X, y)


def _estimator_epoch(MLPClassifier, case, X, y):
    """One epoch per ``fit`` of a scikit-learn-style MLPClassifier (sklearn's or
    fastnn's drop-in, same parameters): what a user's script pays."""
    clf = MLPClassifier(hidden_layer_sizes=case.sizes[1:-1], activation="relu",
                        solver="sgd", momentum=MOMENTUM, nesterovs_momentum=False,
                        batch_size=case.batch, alpha=0.0, learning_rate_init=LR,
                        max_iter=1, warm_start=True, shuffle=True, tol=0.0,
                        n_iter_no_change=10**9, random_state=0)

    def epoch():
        # warm_start + max_iter=1: each fit call is one more epoch.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # ConvergenceWarning after each 1-epoch fit
            clf.fit(X, y)
    return epoch


def make_epoch(lib, case, X, y, threads=None):
    """A callable that trains one epoch of ``case`` on (X, y) in ``lib``."""
    return {"fastnn": _fastnn, "fastnn_estimator": _fastnn_estimator, "numpy": _numpy,
            "torch": _torch, "sklearn": _sklearn}[lib](case, X, y, threads)
