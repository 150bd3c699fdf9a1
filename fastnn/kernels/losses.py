"""Output layers with their losses, and the loss gradient dL/dz of the last layer.

Three pairings, each chosen so that the gradient with respect to the logits z is
simply (prediction - target), scaled by the sample's weight over the batch weight:

* SOFTMAX:  p = softmax(z), L_i = -sum_j t_ij log p_ij       (cross-entropy)
* LINEAR:   y = z,          L_i = 1/2 sum_j (z_ij - t_ij)^2  (squared error)
* SIGMOID:  p = sigmoid(z), L_i = sum_j BCE(t_ij, p_ij)      (multi-label)

With weights w_i (all 1 by default), L = sum_i w_i L_i / sum_i w_i and
delta_i = w_i (p_i - t_i) / sum_i w_i, which is (p - onehot(y)) / n for w = 1.
Losses are formed from z directly (log-sum-exp, softplus), never from log p, so
they stay finite for logits of +-1e4 in float32.  Loss sums are float64.
"""
import numpy as np

from .._jit import STRICT_FASTMATH, jit
from .activations import sigmoid

SOFTMAX = 0
LINEAR = 1
SIGMOID = 2

CODES = {"softmax": SOFTMAX, "linear": LINEAR, "sigmoid": SIGMOID}
NAMES = {SOFTMAX: "softmax", LINEAR: "linear", SIGMOID: "sigmoid"}


@jit(fastmath=set(STRICT_FASTMATH), refcount=False)
def softmax_rows(Z):
    """Z = softmax(Z) row by row, in place; the row max is subtracted first.

    Compiled without 'reassoc' (STRICT_FASTMATH), as softmax_xent_grad is:
    the sum of a row's exponentials in column order in every compiled copy.
    """
    m, n = Z.shape
    for i in range(m):
        row = Z[i]
        mx = row[0]
        for j in range(1, n):
            mx = max(mx, row[j])
        total = row.dtype.type(0)
        for j in range(n):
            row[j] = np.exp(row[j] - mx)
            total += row[j]
        inv = row.dtype.type(1) / total
        for j in range(n):
            row[j] *= inv


@jit(refcount=False)
def sigmoid_rows(Z):
    """Z = sigmoid(Z) elementwise, in place."""
    m, n = Z.shape
    for i in range(m):
        for j in range(n):
            Z[i, j] = sigmoid(Z[i, j])


@jit(refcount=False)
def output_transform(Z, output):
    """Turn the last layer's logits into predictions, in place."""
    if output == SOFTMAX:
        softmax_rows(Z)
    elif output == SIGMOID:
        sigmoid_rows(Z)


@jit(fastmath=set(STRICT_FASTMATH), refcount=False)
def softmax_xent_grad(Z, T, w, scale):
    """Cross-entropy of softmax(Z) against targets T; Z becomes delta in place.

    Returns (sum_i w_i L_i, number of rows whose argmax matches the target's).
    delta_i = w_i * scale * (softmax(z_i) - t_i), scale being 1 / sum of weights.

    Compiled without 'reassoc' and 'arcp' (STRICT_FASTMATH), so that every
    compiled copy of it rounds alike: a freshly compiled process runs this
    function's own code, a process that loads train_epoch from numba's cache
    the copy linked and optimised again there (README, Reproducibility).
    With those flags LLVM associated two things differently in the two
    copies, and the first run trained to other bits than every later one:

    * the delta, (ws z) (1 / total) - ws t here but z (ws / total) - ws t in
      the copy's vectorised loop (AVX2, znver3, 2026-12-01);
    * the sum of a row's exponentials, vectorised in different orders
      (AVX-512, rocketlake, 2026-12-07: a 17-class network, float32 and
      float64; tests/test_training.py, the determinism test).

    Without them each row's sums (of the exponentials, and the float64 t.z
    and sum of t) run in column order, and the delta is the one association
    (ws Z[i, j]) (1 / total) - ws T[i, j], fused on FMA hardware to
    fma(ws Z[i, j], 1 / total, -(ws T[i, j])), in every copy and lane.  A
    handful of classes gains nothing from vectorising these loops.

    Rows are indexed as Z[i, j], never taken as views Z[i]: each view costs
    numba an atomic reference-count increment and decrement (four NRT calls
    a row for Z[i] and T[i]; 300 x 3 logits took 13.9 us with them).
    """
    m, n = Z.shape
    loss = 0.0
    correct = 0
    for i in range(m):
        # the row's max and the first columns holding Z's and T's largest
        # values, kept with selects in one loop: as branches (two argmax
        # loops) they were mispredicted about every other row of random
        # logits (300 x 3 in groups of 16 rows: 8.0 us, 6.9-7.3 with
        # selects); in a spiral fit the gain is lost in the noise (trained
        # logits predict their branches), but the function compiles in a
        # third of the time (0.62 -> 0.21 s)
        mx = Z[i, 0]
        best = 0
        target = 0
        for j in range(1, n):
            above = Z[i, j] > mx
            mx = Z[i, j] if above else mx
            best = j if above else best
            target = j if T[i, j] > T[i, target] else target
        correct += best == target
        total = Z.dtype.type(0)
        t_dot_z = 0.0
        t_sum = 0.0
        for j in range(n):
            t_dot_z += np.float64(T[i, j]) * np.float64(Z[i, j] - mx)
            t_sum += np.float64(T[i, j])
            Z[i, j] = np.exp(Z[i, j] - mx)
            total += Z[i, j]
        # L_i = sum_j t_j (lse - z_j) with lse - mx = log(total)
        loss += np.float64(w[i]) * (t_sum * np.log(np.float64(total)) - t_dot_z)
        ws = w[i] * scale
        inv = Z.dtype.type(1) / total
        for j in range(n):
            Z[i, j] = (ws * Z[i, j]) * inv - ws * T[i, j]
    return loss, correct


@jit(refcount=False)
def squared_error_grad(Z, T, w, scale):
    """Half squared error of Z against T; Z becomes delta = w scale (Z - T)."""
    m, n = Z.shape
    loss = 0.0
    for i in range(m):
        ws = w[i] * scale
        row_loss = 0.0
        for j in range(n):
            r = Z[i, j] - T[i, j]
            row_loss += np.float64(r) * np.float64(r)
            Z[i, j] = ws * r
        loss += 0.5 * np.float64(w[i]) * row_loss
    return loss, 0


@jit(refcount=False)
def sigmoid_xent_grad(Z, T, w, scale):
    """Binary cross-entropy of sigmoid(Z) per column; Z becomes delta in place.

    The loss uses softplus(z) - t z = max(z, 0) - t z + log1p(exp(-|z|)).  A row
    counts as correct when every label is predicted right (exact match).
    """
    m, n = Z.shape
    loss = 0.0
    correct = 0
    half = Z.dtype.type(0.5)
    for i in range(m):
        ws = w[i] * scale
        row_loss = 0.0
        all_right = True
        for j in range(n):
            z = np.float64(Z[i, j])
            t = np.float64(T[i, j])
            row_loss += max(z, 0.0) - t * z + np.log1p(np.exp(-abs(z)))
            p = sigmoid(Z[i, j])
            if (p > half) != (T[i, j] > half):
                all_right = False
            Z[i, j] = ws * (p - T[i, j])
        if all_right:
            correct += 1
        loss += np.float64(w[i]) * row_loss
    return loss, correct


@jit(refcount=False)
def loss_grad(Z, T, w, scale, output):
    """Dispatch on the output code; see the three functions above."""
    if output == SOFTMAX:
        return softmax_xent_grad(Z, T, w, scale)
    if output == SIGMOID:
        return sigmoid_xent_grad(Z, T, w, scale)
    return squared_error_grad(Z, T, w, scale)
