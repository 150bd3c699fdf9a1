"""Optimizer settings.  The update rules themselves are compiled in kernels/optim.py."""
from dataclasses import dataclass

from . import _validation as V
from .kernels import optim as optim_k


@dataclass
class SGD:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Same rule as scikit-learn's 'sgd' solver: v = momentum v - lr g, p += v.
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        V.check_float(self.lr, "lr", low=0.0, low_open=True)
        V.check_float(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)

    @property
    def kind(self):
        """Kernel code of this rule."""
        if self.momentum == 0.0:
            return optim_k.SGD
        return optim_k.NESTEROV if self.nesterov else optim_k.MOMENTUM

    def hyper(self):
        """(momentum, beta1, beta2, eps) as the kernel expects them."""
        return self.momentum, 0.0, 0.0, 0.0


@dataclass
class Adam:
    """Adam (Kingma & Ba), with scikit-learn's defaults and bias correction."""

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        V.check_float(self.lr, "lr", low=0.0, low_open=True)
        V.check_float(self.beta1, "beta1", low=0.0, high=1.0, high_open=True)
        V.check_float(self.beta2, "beta2", low=0.0, high=1.0, high_open=True)
        V.check_float(self.eps, "eps", low=0.0, low_open=True)

    kind = optim_k.ADAM

    def hyper(self):
        """(momentum, beta1, beta2, eps) as the kernel expects them."""
        return 0.0, self.beta1, self.beta2, self.eps


def make_optimizer(name, lr, momentum=0.9, nesterov=False):
    """An optimizer from a name: 'sgd', 'momentum', 'nesterov' or 'adam'."""
    if name == "sgd":
        return SGD(lr=lr)
    if name == "momentum":
        return SGD(lr=lr, momentum=momentum)
    if name == "nesterov":
        return SGD(lr=lr, momentum=momentum, nesterov=True)
    if name == "adam":
        return Adam(lr=lr)
    raise ValueError(f"optimizer must be 'sgd', 'momentum', 'nesterov' or 'adam'; got {name!r}")
