"""Full-batch training with scipy's L-BFGS-B (the estimators' ``solver='lbfgs'``).

The objective and its gradient come from the compiled training step
(trainer.FullBatchObjective: kernels.step.loss_gradient over all rows as one
batch), evaluated on the network's flat ``params`` buffer in place; scipy only
sees float64 copies of that buffer.  The options are scikit-learn's
(``MLPClassifier._fit_lbfgs`` in 1.9): ``maxiter=max_iter``,
``maxfun=max_fun``, ``gtol=tol``, scipy's defaults for everything else, and
``iprint`` from ``verbose`` on the scipy versions (< 1.15) that still take it.

scipy is an optional dependency (``pip install "fastnn[lbfgs]"``), imported
only when a minimisation starts.
"""
import contextlib
from dataclasses import dataclass

import numpy as np

from .trainer import FullBatchObjective

_EXTRA_HINT = 'pip install "fastnn[lbfgs]"'
_BLAS_CONTROLLER = None   # threadpoolctl's, made on the first minimisation


@dataclass
class LbfgsResult:
    """The outcome of :func:`minimize_lbfgs`.

    n_iter: L-BFGS-B iterations done (scipy's ``nit``); n_fun: objective
    evaluations; loss: the objective at the final parameters; converged: scipy
    reported success (status 0); stopped: a callback asked to stop; status and
    message: scipy's (a note of our own when a callback stopped it).
    """

    n_iter: int
    n_fun: int
    loss: float
    converged: bool
    stopped: bool
    status: int
    message: str


class _Stop(Exception):
    """Raised inside scipy by the per-iteration hook when a callback returns True."""


def _scipy_optimize():
    try:
        import scipy
        from scipy import optimize
    except ImportError:
        raise ImportError(f"solver='lbfgs' needs scipy: {_EXTRA_HINT}") from None
    return scipy.__version__, optimize


def _one_blas_thread():
    """Context running scipy's BLAS on one thread, when threadpoolctl is there.

    L-BFGS-B's own work is a few vector operations per iteration (10 pairs of
    n-vectors), where BLAS threads gain nothing and instead compete with
    numba's threads for the cores: measured on 2 busy cores, fits of the
    parity sets took 2.5-7x longer with OpenBLAS's 2 threads than with 1
    (digits 0.48 s against 0.07 s).  The controller is made once: finding the
    loaded libraries takes 2-20 ms, about a whole small fit (wine: 17 ms).
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return contextlib.nullcontext()
        _BLAS_CONTROLLER = ThreadpoolController()   # after scipy: sees its BLAS
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _takes_iprint(version):
    """scipy < 1.15 reads L-BFGS-B's ``iprint``; later ones deprecate it, and
    scikit-learn then passes nothing (sklearn.utils.fixes)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < (1, 15)


def minimize_lbfgs(network, X, T, w, *, l2, max_iter, max_fun, tol, verbose=False,
                   callback=None):
    """Minimise ``mean loss + l2/2 sum ||W||^2`` over all rows of (X, T, w) with
    scipy's L-BFGS-B, in place on ``network.params``; returns an :class:`LbfgsResult`.

    X, T, w: checked data as the trainer takes it (C-contiguous, the network's
    dtype; w one weight per row; the mean is weighted by w).  ``max_iter``,
    ``max_fun``, ``tol`` become scipy's ``maxiter``, ``maxfun``, ``gtol``.
    ``verbose``: scipy's own report where scipy still prints one (< 1.15),
    else one line per iteration.  ``callback(iteration, loss)`` is called after
    every iteration with the network at that iteration's parameters; returning
    True stops the minimisation there.

    The parameters stay in the network's dtype: in float32 every evaluation
    rounds scipy's float64 point to float32, and the gradient is handed back
    as float64, so the objective scipy sees is the float32 network's.
    """
    version, optimize = _scipy_optimize()
    objective = FullBatchObjective(network, X, T, w, l2)
    params = network.params
    # The loss at the last point evaluated: L-BFGS-B's iterates are points it
    # has just evaluated, so the per-iteration hook reads the loss from here
    # (checked against the point itself) instead of paying another evaluation.
    last = {"x": np.empty(params.shape[0]), "loss": np.nan, "n_fun": 0}

    def fun(x):
        params[:] = x   # rounded to the network's dtype (a no-op cast in float64)
        loss, grad = objective()
        last["n_fun"] += 1
        np.copyto(last["x"], x)
        last["loss"] = loss
        # a new array each time: scipy caches the gradient with its x (to reuse
        # it when asked at the same x), and the objective's buffer is
        # overwritten by the next evaluation
        return loss, grad.astype(np.float64)

    options = {"maxfun": int(max_fun), "maxiter": int(max_iter), "gtol": float(tol)}
    print_lines = bool(verbose)
    if _takes_iprint(version):
        options["iprint"] = 1 if verbose else -1
        print_lines = False
    iteration = [0]

    def hook(xk):
        iteration[0] += 1
        # afterwards params == xk and last["loss"] is the loss there; the
        # iterate was always the last point evaluated in scipy 1.17's L-BFGS-B
        # (checked: no extra evaluations), the re-evaluation guards other versions
        if not np.array_equal(xk, last["x"]):
            fun(xk)
            last["n_fun"] -= 1                  # not one of the solver's evaluations
        else:
            params[:] = xk
        if print_lines:
            print(f"Iteration {iteration[0]}, loss = {last['loss']:.8f}")
        if callback is not None and callback(iteration[0], last["loss"]):
            raise _Stop

    x0 = params.astype(np.float64)
    hooked = print_lines or callback is not None
    try:
        with _one_blas_thread():
            res = optimize.minimize(fun, x0, method="L-BFGS-B", jac=True, options=options,
                                    callback=hook if hooked else None)
    except _Stop:
        # raised through scipy (any version) by the hook, which left params at
        # that iteration's point
        return LbfgsResult(n_iter=iteration[0], n_fun=last["n_fun"], loss=last["loss"],
                           converged=False, stopped=True, status=-1,
                           message="stopped by a callback")
    params[:] = res.x
    message = res.message.decode() if isinstance(res.message, bytes) else str(res.message)
    return LbfgsResult(n_iter=int(res.nit), n_fun=int(res.nfev), loss=float(res.fun),
                       converged=bool(res.status == 0), stopped=False,
                       status=int(res.status), message=message)


def convergence_message(result, max_iter):
    """scikit-learn's ConvergenceWarning text for an L-BFGS-B run that did not
    converge (sklearn.utils.optimize._check_optimize_result, 1.9)."""
    n_iter = min(result.n_iter, max_iter)
    text = (f"lbfgs failed to converge after {n_iter} iteration(s) "
            f"(status={result.status}):\n{result.message}\n")
    if n_iter == max_iter:   # only then is more iterations the advice
        text += ("\nIncrease the number of iterations to improve the convergence "
                 f"(max_iter={max_iter}).")
    return text + ("\nYou might also want to scale the data as shown in:\n"
                   "    https://scikit-learn.org/stable/modules/preprocessing.html")
