"""Memory: peak resident set of a process that fits the mnist case
(784-256-10, batch 128) for one epoch (asv's peakmem includes setup)."""
from ._ref import CASES, steps


class FitMemory:
    """peakmem_* of fastnn fitting the mnist case."""

    def setup(self):
        self.epoch = steps.fastnn_epoch(CASES["mnist"])

    def peakmem_fit_mnist(self):
        self.epoch()
