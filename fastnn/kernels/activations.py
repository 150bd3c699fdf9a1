"""Activation functions h(z) and their derivatives h'(z), written from the output.

Each derivative is expressed through the layer's output a = h(z), as in the
derivation notes, so the backward pass never recomputes h:

    relu'    = 1[a > 0]
    sigmoid' = a (1 - a)
    tanh'    = 1 - a^2
    identity'= 1

Activations are chosen by an integer code so that one compiled kernel serves
every network; the branch is taken once per layer, outside the loops.
"""
import numpy as np

from .._jit import jit

IDENTITY = 0
RELU = 1
SIGMOID = 2
TANH = 3

CODES = {"identity": IDENTITY, "relu": RELU, "logistic": SIGMOID, "sigmoid": SIGMOID, "tanh": TANH}
NAMES = {IDENTITY: "identity", RELU: "relu", SIGMOID: "sigmoid", TANH: "tanh"}


@jit
def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only taken of -|z|."""
    one = type(z)(1)
    if z >= 0:
        return one / (one + np.exp(-z))
    e = np.exp(z)
    return e / (one + e)


@jit(refcount=False)
def bias_activate_row(z, b, code):
    """z = h(z + b) in place, for one contiguous row (or piece of a row)."""
    zero = z.dtype.type(0)
    n = z.shape[0]
    if code == RELU:
        for j in range(n):
            z[j] = max(z[j] + b[j], zero)
    elif code == SIGMOID:
        for j in range(n):
            z[j] = sigmoid(z[j] + b[j])
    elif code == TANH:
        for j in range(n):
            z[j] = np.tanh(z[j] + b[j])
    else:
        for j in range(n):
            z[j] = z[j] + b[j]


@jit(refcount=False)
def derivative_row(d, a, code):
    """d *= h'(z) in place for one contiguous row, h' computed from a = h(z).

    The relu case is a select, not a branch: with contiguous rows LLVM
    vectorises every case (a branch on the sign of a costs a misprediction
    for about every other element on real data).
    """
    zero = d.dtype.type(0)
    one = d.dtype.type(1)
    n = d.shape[0]
    if code == RELU:
        for j in range(n):
            d[j] = d[j] if a[j] > zero else zero
    elif code == SIGMOID:
        for j in range(n):
            d[j] *= a[j] * (one - a[j])
    elif code == TANH:
        for j in range(n):
            d[j] *= one - a[j] * a[j]


@jit(refcount=False)
def add_bias_activate(Z, b, code):
    """Z = h(Z + b) in place, b broadcast over the rows of Z."""
    for i in range(Z.shape[0]):
        bias_activate_row(Z[i], b, code)


@jit(refcount=False)
def scale_by_derivative(delta, A, code):
    """delta *= h'(z), with h' computed from the layer's output A = h(z)."""
    if code == IDENTITY:
        return
    for i in range(delta.shape[0]):
        derivative_row(delta[i], A[i], code)
