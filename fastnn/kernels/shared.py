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
So a symbol must exist before any caller of it loads.

Each signature is compiled (or loaded from numba's cache) and published
only when first needed, not when the module is imported: the float64 GEMM
core cost about 4 s of a cold first run that trains in float32 alone.
Needed means one of:

* a caller is being compiled: ``accepts``, which its typing asks, publishes;
* a caller is being loaded from the cache: numba rebuilds every cached
  library through ``Codegen.unserialize_library``, which this module wraps
  to publish, first, each shared symbol named in the library's code.

The arithmetic is the callee's own code either way: nothing of it is
optimised into its callers, so it cannot round differently in two copies.
"""
import hashlib
import inspect

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.codegen import Codegen
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic, overload

# symbol name (bytes, as it appears in compiled code) -> (SharedFunction,
# argument types), for every declared signature, published or not
_BY_NAME = {}
_PREFIXES = set()   # their prefixes (bytes): a library naming none is passed by quickly


class SharedFunction:
    """``dispatcher`` compiled for one signature per dtype and callable by symbol.

    ``signature_of(dtype)`` gives the argument types of the signature for
    each of ``dtypes``; ``prefix`` starts the symbols' names.  ``call`` is an intrinsic
    for compiled code, taking the dispatcher's arguments as one tuple;
    ``accepts(*argtypes)`` says whether those numba types are one of the
    shared signatures (others must call the dispatcher itself), publishing
    it first.
    """

    def __init__(self, dispatcher, signature_of, prefix, dtypes=(np.float32, np.float64)):
        self.dispatcher = dispatcher
        self.symbols = {}            # argument types -> symbol name, once published
        self.return_types = {}       # argument types -> the compiled return type
        self._names = {}             # argument types -> symbol name
        self._publishing = set()     # being compiled now
        for dtype in dtypes:
            argtypes = tuple(signature_of(dtype))
            # the name carries the signature, so a caller cached against
            # another argument list never calls this one with the wrong
            # arguments; its symbol is unresolved instead, and calling it
            # crashes (a stale cache: clear it, README "The first run")
            digest = hashlib.sha1(str(argtypes).encode()).hexdigest()[:12]
            self._names[argtypes] = f"{prefix}.{digest}"
            _BY_NAME[self._names[argtypes].encode()] = (self, argtypes)
        _PREFIXES.add(prefix.encode())
        self.call = self._make_call()
        if not _LOADS_PUBLISH:   # numba's internals moved: publish all, as callers may load
            for argtypes in self._names:
                self.publish(argtypes)

    def publish(self, argtypes):
        """Compile (or load from the cache) the signature ``argtypes`` and
        publish its entry point under its symbol, once per process."""
        # numba's own re-entrant lock: a thread typing or loading a caller
        # holds it when it asks for the symbol, so a lock of ours could deadlock
        with global_compiler_lock:
            if argtypes in self.symbols or argtypes in self._publishing:
                return
            dispatcher = self.dispatcher
            self._publishing.add(argtypes)
            try:
                dispatcher.compile(argtypes)
            finally:
                self._publishing.discard(argtypes)
            result = dispatcher.overloads[argtypes]
            address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
            llvm.add_symbol(self._names[argtypes], address)
            self.return_types[argtypes] = result.signature.return_type
            self.symbols[argtypes] = self._names[argtypes]

    def accepts(self, *argtypes):
        """True when ``argtypes`` (numba types) are a shared signature; it is
        then published (this runs while a caller is typed, before its code
        is finalised)."""
        argtypes = tuple(argtypes)
        if argtypes not in self._names:
            return False
        self.publish(argtypes)
        return True

    def _make_call(self):
        symbols = self.symbols
        return_types = self.return_types
        label = self.dispatcher.__name__

        @intrinsic
        def call_shared(typingctx, args):
            argtypes = tuple(args)
            if argtypes not in symbols:
                raise TypeError(f"{label} is shared for {list(symbols)}, not {argtypes}")
            restype = return_types[argtypes]
            sig = restype(args)

            def codegen(context, builder, signature, values):
                fnty = context.call_conv.get_function_type(restype, argtypes)
                fn = cgutils.get_or_insert_function(builder.module, fnty, symbols[argtypes])
                status, result = context.call_conv.call_function(
                    builder, fn, restype, argtypes,
                    cgutils.unpack_tuple(builder, values[0], len(argtypes)))
                with cgutils.if_unlikely(builder, status.is_error):
                    context.call_conv.return_status_propagate(builder, status)
                return result if restype != types.none else context.get_dummy_value()

            return sig, codegen

        call_shared.__name__ = f"call_{label}"
        return call_shared


def calls_by_symbol(shared):
    """Decorator for a Python function ``stub`` standing for ``shared``'s
    dispatcher: in compiled code a call of ``stub`` calls the shared symbol
    when its argument types are a shared signature, else the dispatcher
    itself (linked in as numba does by default: the same source).  From
    Python, ``stub`` itself runs (it should call the dispatcher)."""
    fallback = shared.dispatcher

    def register(stub):
        params = ", ".join(inspect.signature(stub).parameters)
        # numba wants an overload with the stub's own parameter names, and
        # implementations of that arity: written out for this stub
        source = (f"def typed({params}):\n"
                  f"    if shared.accepts({params}):\n"
                  f"        call = shared.call\n"
                  f"        return lambda {params}: call(({params},))\n"
                  f"    return lambda {params}: fallback({params})\n")
        # the stub's module, so compile logs and the notice name it as fastnn's
        namespace = {"__name__": stub.__module__, "shared": shared, "fallback": fallback}
        exec(source, namespace)
        overload(stub, inline="always")(namespace["typed"])
        return stub
    return register


def _publish_named_in(serialized):
    """Publish every shared function whose symbol the serialized library
    (numba's cached form: name, kind, then object code and bitcode as bytes)
    names: it calls that symbol, which must exist before the library loads."""
    stack = [serialized]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, (bytes, bytearray)) and any(p in item for p in _PREFIXES):
            for name, (shared, argtypes) in list(_BY_NAME.items()):
                if name in item:
                    shared.publish(argtypes)


def _wrap_library_loading():
    """Make numba's Codegen.unserialize_library publish the shared symbols a
    cached library calls before loading it; False if numba has no such method."""
    original = getattr(Codegen, "unserialize_library", None)
    if original is None:
        return False

    def unserialize_library(self, serialized):
        _publish_named_in(serialized)
        return original(self, serialized)

    unserialize_library.__doc__ = original.__doc__
    Codegen.unserialize_library = unserialize_library
    return True


_LOADS_PUBLISH = _wrap_library_loading()
