"""Compiled (numba) kernels.  Everything in this package is @njit code only."""
