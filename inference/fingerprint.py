"""A digest of everything that decides what a Python callable computes: compiled-program keys.

``infer`` and ``fit`` keep compiled programs in memory (:mod:`inference.compilation`) keyed
by the model, the method and the shapes of the data. A key must change whenever the program
would: a model redefined, a helper it calls edited, a closed-over constant or a module-level
array it reads given a new value, a method setting changed. So a function is fingerprinted
by what it runs and what it reads, not by its identity:

* its code (bytecode, constants, names; nested functions and lambdas included), default
  arguments and the *current* contents of its closure cells;
* for user code (anything outside the libraries in :data:`LIBRARIES`), the module globals its
  code names, recursively (helper functions, arrays, numbers, dicts ...);
* arrays by dtype, shape and a digest of their bytes; containers, dataclasses, pytrees
  (Equinox modules, NumPyro distributions) and plain objects by their contents;
* modules by name, library callables without Python code (ufuncs, compiled functions) by
  identity; jitted user functions through ``__wrapped__``.

What cannot be fingerprinted faithfully (a traced value, an object with no visible state)
raises :class:`Unfingerprintable`, and the caller then compiles afresh rather than risk a
stale program. Objects taken by identity are returned in :attr:`Fingerprint.identities`
so that a cache entry can keep them alive (an ``id`` is unique only while its object lives).

Example:
    >>> def make(c):
    ...     def model():
    ...         return c * 2
    ...     return model
    >>> fingerprint(make(1.0)).digest == fingerprint(make(1.0)).digest
    True
    >>> fingerprint(make(1.0)).digest == fingerprint(make(2.0)).digest
    False
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["fingerprint", "Fingerprint", "Unfingerprintable", "LIBRARIES"]

#: Top-level packages whose code is taken as fixed within a process: their functions are
#: fingerprinted by code identity and closure contents, without following their globals.
LIBRARIES = frozenset({
    "abc", "builtins", "collections", "dataclasses", "functools", "itertools", "math",
    "operator", "typing", "numbers", "warnings", "jax", "jaxlib", "numpy", "scipy", "numpyro",
    "blackjax", "optax", "equinox", "flowjax", "jaxtyping", "tqdm", "arviz", "pandas",
    "ppl", "inference",
})

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
# Class attributes that say nothing about behaviour, or that are descriptors of the
# instance layout (slots, __dict__).
_SKIP_CLASS_ATTRS = frozenset({
    "__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__annotations__",
    "__dataclass_fields__", "__dataclass_params__", "__match_args__", "__slots__",
    "__abstractmethods__", "_abc_impl", "__parameters__", "__orig_bases__",
})


class Unfingerprintable(TypeError):
    """Raised for an object whose behaviour cannot be captured in a fingerprint."""


class Fingerprint(NamedTuple):
    """``digest``: hex string; ``identities``: objects the digest names by identity."""

    digest: str
    identities: tuple


def fingerprint(*objects: Any) -> Fingerprint:
    """The :class:`Fingerprint` of ``objects`` (see the module docstring for the rules).

    Raises:
        Unfingerprintable: some part cannot be captured faithfully.

    Example:
        >>> import numpy as np
        >>> fingerprint(np.ones(3)).digest == fingerprint(np.ones(3)).digest
        True
    """
    hasher = _Hasher()
    try:
        for obj in objects:
            hasher.add(obj)
    except RecursionError:
        raise Unfingerprintable("object graph too deep to fingerprint") from None
    return Fingerprint(hasher.digest(), tuple(hasher.identities))


def _top(module: Any) -> str:
    return (module or "").partition(".")[0]


def _is_library(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and _top(module) in LIBRARIES


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Hasher:
    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=20)
        self._seen: dict[int, int] = {}
        self._alive: list[Any] = []  # keeps ids in _seen unique while hashing
        self.identities: list[Any] = []

    def digest(self) -> str:
        return self._h.hexdigest()

    def _put(self, *tokens: Any) -> None:
        for token in tokens:
            data = token if isinstance(token, bytes) else repr(token).encode()
            self._h.update(len(data).to_bytes(8, "little"))
            self._h.update(data)

    def _identity(self, tag: str, obj: Any) -> None:
        self.identities.append(obj)
        self._put(tag, type(obj).__qualname__, id(obj))

    def add(self, obj: Any) -> None:
        if isinstance(obj, _SCALARS):
            self._put(type(obj).__name__, obj)
            return
        key = id(obj)
        if key in self._seen:  # shared or cyclic reference
            self._put("ref", self._seen[key])
            return
        self._seen[key] = len(self._seen)
        self._alive.append(obj)
        self._dispatch(obj)

    # -- the rules ---------------------------------------------------------------------
    def _dispatch(self, obj: Any) -> None:
        if isinstance(obj, jax.core.Tracer):
            raise Unfingerprintable("a traced value (an argument of jit/vmap) is not a constant")
        if isinstance(obj, jax.Array):
            return self._array(obj)
        if isinstance(obj, (np.ndarray, np.generic)):
            return self._array(obj)
        if isinstance(obj, types.ModuleType):
            return self._put("module", obj.__name__)
        if isinstance(obj, (tuple, list)):
            self._put(type(obj).__qualname__, len(obj))
            if type(obj) not in (tuple, list):  # NamedTuple and friends
                self.add(type(obj))
            for item in obj:
                self.add(item)
            return
        if isinstance(obj, dict):
            self._put(type(obj).__qualname__, len(obj))
            for k, v in obj.items():
                self.add(k)
                self.add(v)
            return
        if isinstance(obj, (set, frozenset)):
            items = sorted(fingerprint(item).digest for item in obj)
            return self._put(type(obj).__qualname__, items)
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, types.MethodType):
            self._put("method")
            self.add(obj.__func__)
            return self.add(obj.__self__)
        if isinstance(obj, functools.partial):
            self._put("partial")
            self.add(obj.func)
            self.add(obj.args)
            return self.add(dict(obj.keywords))
        if isinstance(obj, types.CodeType):
            return self._code(obj)
        if isinstance(obj, (staticmethod, classmethod)):
            self._put(type(obj).__name__)
            return self.add(obj.__func__)
        if isinstance(obj, property):
            self._put("property")
            self.add(obj.fget)
            self.add(obj.fset)
            return self.add(obj.fdel)
        if isinstance(obj, type):
            return self._class(obj)
        if isinstance(obj, jax.Device):
            return self._put("device", obj.platform, obj.id, obj.process_index)
        if isinstance(obj, jax.tree_util.PyTreeDef):
            return self._put("treedef", str(obj))
        if isinstance(obj, jax.sharding.Mesh):
            return self._put("mesh", repr(obj))
        return self._object(obj)

    def _array(self, x: Any) -> None:
        if isinstance(x, jax.Array):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                self._put("key", str(x.dtype))
                x = jax.random.key_data(x)
            if not x.is_fully_addressable:
                raise Unfingerprintable("an array spread over several processes")
        host = np.asarray(x)
        if host.dtype == object:
            raise Unfingerprintable("a NumPy array of Python objects")
        self._put("array", host.dtype.str, host.shape,
                  hashlib.blake2b(np.ascontiguousarray(host).tobytes(), digest_size=16).digest())

    def _code(self, code: types.CodeType) -> None:
        self._put("code", code.co_code, code.co_names, code.co_varnames, code.co_freevars,
                  code.co_cellvars, code.co_argcount, code.co_kwonlyargcount, code.co_flags)
        for const in code.co_consts:
            self.add(const)

    def _function(self, fn: types.FunctionType) -> None:
        library = _is_library(fn)
        if library:  # fixed code: identity of the code object suffices
            self._identity("libcode", fn.__code__)
        else:
            self._code(fn.__code__)
        self.add(fn.__defaults__)
        self.add(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                self.add(cell.cell_contents)
            except ValueError:  # an empty cell (a name not bound yet)
                self._put("empty-cell")
        if not library:
            module_globals = fn.__globals__
            for name in sorted(_code_names(fn.__code__)):
                if name in module_globals:
                    self._put("global", name)
                    self.add(module_globals[name])

    def _class(self, cls: type) -> None:
        if _is_library(cls):
            return self._identity("libclass", cls)
        self._put("class", cls.__module__, cls.__qualname__)
        for base in cls.__bases__:
            self.add(base)
        for name, value in vars(cls).items():
            if name in _SKIP_CLASS_ATTRS or type(value).__name__ in (
                    "member_descriptor", "getset_descriptor", "wrapper_descriptor"):
                continue
            self._put("attr", name)
            try:
                self.add(value)
            except Unfingerprintable:
                self._identity("attr-identity", value)

    def _object(self, obj: Any) -> None:
        cls = type(obj)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None and callable(obj):  # jax.jit(f), functools.wraps wrappers
            self._put("wrapper", cls.__qualname__)
            self.add(wrapped)
            if not isinstance(getattr(obj, "__dict__", None), dict):
                return
        if dataclasses.is_dataclass(obj):
            self._put("dataclass")
            self.add(cls)
            for f in dataclasses.fields(obj):
                self._put("field", f.name)
                self.add(getattr(obj, f.name, None))
            return
        leaves, treedef = jax.tree_util.tree_flatten(obj)
        if not (len(leaves) == 1 and leaves[0] is obj):  # a registered pytree
            self._put("pytree", str(treedef))
            self.add(cls)
            for leaf in leaves:
                self.add(leaf)
            return
        state = getattr(obj, "__dict__", None)
        slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())
                 if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
        if isinstance(state, dict) or slots:
            self._put("object")
            self.add(cls)
            if isinstance(state, dict):
                self.add(state)
            for s in slots:
                self._put("slot", s)
                self.add(getattr(obj, s, None))
            return
        if _is_library(cls) or _is_library(obj):
            # A compiled library callable (a ufunc, a builtin, jax's C++ objects): fixed.
            return self._identity("libobject", obj)
        raise Unfingerprintable(f"cannot see the state of a {cls.__module__}.{cls.__qualname__}")
