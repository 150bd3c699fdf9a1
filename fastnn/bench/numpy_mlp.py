"""A plain float32 NumPy MLP: the reference fastnn is compared against.

relu hidden layers, softmax output with mean cross-entropy, SGD with classical
momentum (v = mu v - lr g; p += v, scikit-learn's rule).  Products go through
np.matmul (BLAS) into buffers allocated once per batch size, so the reference
is a fair, reasonably efficient NumPy implementation rather than a strawman.
"""
import numpy as np


class NumpyMLP:
    """The reference network.

    Parameters
    ----------
    weights, biases : lists of arrays (fan_in x fan_out, and fan_out); copied
        to float32, so a fastnn network's parameters can be reused exactly.
    lr, momentum : SGD settings.
    """

    def __init__(self, weights, biases, lr=0.01, momentum=0.9):
        self.W = [np.array(w, dtype=np.float32, order="C") for w in weights]
        self.b = [np.array(b, dtype=np.float32) for b in biases]
        self.vW = [np.zeros_like(w) for w in self.W]
        self.vb = [np.zeros_like(b) for b in self.b]
        self.gW = [np.zeros_like(w) for w in self.W]
        self.gb = [np.zeros_like(b) for b in self.b]
        self.lr = np.float32(lr)
        self.mu = np.float32(momentum)
        self._rows = None

    @classmethod
    def from_sizes(cls, sizes, seed=0, **kw):
        """He-initialised network with the given layer sizes."""
        rng = np.random.default_rng(seed)
        W = [rng.standard_normal((a, b), dtype=np.float32) * np.float32(np.sqrt(2.0 / a))
             for a, b in zip(sizes[:-1], sizes[1:])]
        return cls(W, [np.zeros(b, dtype=np.float32) for b in sizes[1:]], **kw)

    def _buffers(self, m):
        # Activations and deltas for m rows, made once per batch size.
        if self._rows != m:
            self.A = [np.empty((m, w.shape[1]), dtype=np.float32) for w in self.W]
            self.D = [np.empty((m, w.shape[0]), dtype=np.float32) for w in self.W[1:]]
            self._rows = m

    def loss_and_gradient(self, X, y):
        """Mean cross-entropy on (X, y) and its gradient, left in self.gW /
        self.gb (buffers reused by the next call)."""
        m = X.shape[0]
        self._buffers(m)
        a = X
        L = len(self.W)
        for l in range(L):
            z = self.A[l]
            np.matmul(a, self.W[l], out=z)
            z += self.b[l]
            if l < L - 1:
                np.maximum(z, 0, out=z)
            a = z
        # softmax cross-entropy, stably; z becomes delta = (p - onehot) / m
        z = self.A[-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        rows = np.arange(m)
        loss = -float(np.log(np.maximum(z[rows, y], np.float32(1e-30))).astype(np.float64).mean())
        z[rows, y] -= 1
        z *= np.float32(1.0 / m)
        delta = z
        for l in range(L - 1, -1, -1):
            a_prev = X if l == 0 else self.A[l - 1]
            np.matmul(a_prev.T, delta, out=self.gW[l])
            np.sum(delta, axis=0, out=self.gb[l])
            if l > 0:
                d_prev = self.D[l - 1]
                np.matmul(delta, self.W[l].T, out=d_prev)
                d_prev *= a_prev > 0          # relu' from the output
                delta = d_prev
        return loss

    def step(self, X, y):
        """One SGD-with-momentum step on the batch (X, y); returns its loss."""
        loss = self.loss_and_gradient(X, y)
        for p, v, g in zip(self.W + self.b, self.vW + self.vb, self.gW + self.gb):
            v *= self.mu
            v -= self.lr * g
            p += v
        return loss

    def epoch(self, X, y, batch, rng):
        """One shuffled pass over (X, y) in mini-batches; returns the mean loss."""
        order = rng.permutation(X.shape[0])
        total = 0.0
        for s in range(0, X.shape[0], batch):
            idx = order[s:s + batch]
            total += self.step(X[idx], y[idx]) * len(idx)
        return total / X.shape[0]
