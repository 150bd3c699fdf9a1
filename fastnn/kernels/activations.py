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


@jit
def add_bias_activate(Z, b, code):
    """Z = h(Z + b) in place, b broadcast over the rows of Z."""
    m, n = Z.shape
    zero = Z.dtype.type(0)
    for i in range(m):
        row = Z[i]
        if code == RELU:
            for j in range(n):
                row[j] = max(row[j] + b[j], zero)
        elif code == SIGMOID:
            for j in range(n):
                row[j] = sigmoid(row[j] + b[j])
        elif code == TANH:
            for j in range(n):
                row[j] = np.tanh(row[j] + b[j])
        else:
            for j in range(n):
                row[j] = row[j] + b[j]


@jit
def scale_by_derivative(delta, A, code):
    """delta *= h'(z), with h' computed from the layer's output A = h(z)."""
    m, n = delta.shape
    zero = delta.dtype.type(0)
    one = delta.dtype.type(1)
    if code == IDENTITY:
        return
    for i in range(m):
        d_row = delta[i]
        a_row = A[i]
        if code == RELU:
            for j in range(n):
                d_row[j] = d_row[j] if a_row[j] > zero else zero
        elif code == SIGMOID:
            for j in range(n):
                d_row[j] *= a_row[j] * (one - a_row[j])
        elif code == TANH:
            for j in range(n):
                d_row[j] *= one - a_row[j] * a_row[j]
