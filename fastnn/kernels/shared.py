"""Compiled functions called by symbol, not linked into every caller.

numba links a copy of each callee's compiled module into every caller and
runs LLVM's optimiser and code generator over the whole of it again there,
at every level of the call tree.  The GEMM core (the micro-kernels of
microkernel.py, unrolled vector IR) was thus optimised and turned into
machine code once for itself and again for each function above it --
forward, backward, the weight gradient, a shard of rows, a block of the
weights pass, the parallel pass, the epoch, the prediction -- which made
most of a cold first run (README, "The first run").

``SharedFunction`` compiles a dispatcher for a fixed list of signatures
once (or loads it from numba's cache), publishes each entry point as a
process-wide symbol (``llvmlite.binding.add_symbol``, as numba does for its
own C helpers) and gives an intrinsic that calls it through that symbol
with numba's own calling convention (arrays passed as numba passes them,
errors propagated).  A caller then holds one call instruction, whether
compiled in this process or loaded from the cache: a cached caller keeps
the symbol's name, which the JIT linker resolves when the caller is loaded.
So the symbols must exist before any caller loads, and are published when
the module defining the shared function is imported.

The arithmetic is the callee's own code either way: nothing of it is
optimised into its callers, so it cannot round differently in two copies.
"""
import hashlib

import llvmlite.binding as llvm
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


class SharedFunction:
    """``dispatcher`` compiled for ``signatures`` and callable by symbol.

    ``call`` is an intrinsic for compiled code, taking the dispatcher's
    arguments as one tuple; ``accepts(*argtypes)`` says whether those numba
    types are one of the shared signatures (others must call the dispatcher
    itself).
    """

    def __init__(self, dispatcher, signatures, prefix):
        self.dispatcher = dispatcher
        self.symbols = {}
        for argtypes in signatures:
            argtypes = tuple(argtypes)
            dispatcher.compile(argtypes)
            result = dispatcher.overloads[argtypes]
            if result.signature.return_type != types.none:
                raise TypeError(f"{dispatcher.__name__}: a shared function returns nothing")
            address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
            # the name carries the signature, so a caller cached against
            # another argument list never calls this one with the wrong
            # arguments; its symbol is unresolved instead, and calling it
            # crashes (a stale cache: clear it, README "The first run")
            digest = hashlib.sha1(str(argtypes).encode()).hexdigest()[:12]
            name = f"{prefix}.{digest}"
            llvm.add_symbol(name, address)
            self.symbols[argtypes] = name
        self.call = self._make_call()

    def accepts(self, *argtypes):
        """True when ``argtypes`` (numba types) are a shared signature."""
        return tuple(argtypes) in self.symbols

    def _make_call(self):
        symbols = self.symbols
        label = self.dispatcher.__name__

        @intrinsic
        def call_shared(typingctx, args):
            argtypes = tuple(args)
            if argtypes not in symbols:
                raise TypeError(f"{label} is shared for {list(symbols)}, not {argtypes}")
            sig = types.none(args)

            def codegen(context, builder, signature, values):
                fnty = context.call_conv.get_function_type(types.none, argtypes)
                fn = cgutils.get_or_insert_function(builder.module, fnty, symbols[argtypes])
                status, _ = context.call_conv.call_function(
                    builder, fn, types.none, argtypes,
                    cgutils.unpack_tuple(builder, values[0], len(argtypes)))
                with cgutils.if_unlikely(builder, status.is_error):
                    context.call_conv.return_status_propagate(builder, status)
                return context.get_dummy_value()

            return sig, codegen

        call_shared.__name__ = f"call_{label}"
        return call_shared
