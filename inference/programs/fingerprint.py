"""A digest of everything that decides what a Python callable computes: compiled-program keys.

``infer`` and ``fit`` keep compiled programs in memory (:mod:`inference.programs.cache`) keyed
by the model, the method and the shapes of the data. A key must change whenever the program
would: a model redefined, a helper it calls edited, a closed-over constant or a module-level
array it reads given a new value, a method setting changed. So a function is fingerprinted
by what it runs and what it reads, not by its identity:

* its code (bytecode, constants, names; nested functions and lambdas included), default
  arguments and the *current* contents of its closure cells;
* for user code (anything outside the libraries in :data:`LIBRARIES` and the standard
  library), the module globals its code names, recursively (helper functions, arrays,
  numbers, dicts ...);
* arrays by dtype, shape and a digest of their bytes; containers, dataclasses, pytrees
  (Equinox modules, NumPyro distributions) and plain objects by their contents;
* modules by name, library callables without Python code (ufuncs, compiled functions) by
  identity; jitted user functions through ``__wrapped__``.

What cannot be fingerprinted faithfully (a traced value, an object with no visible state)
raises :class:`Unfingerprintable`, and the caller then compiles afresh rather than risk a
stale program. Objects taken by identity are returned in :attr:`Fingerprint.identities`
so that a cache entry can keep them alive (an ``id`` is unique only while its object lives).

Every fingerprint also has a *stable* digest, :attr:`Fingerprint.stable`, equal in every
process for the same code and values (it keys programs kept on disk, see
:mod:`inference.programs.store`): where the in-process digest names a library object by its
``id``, the stable one names it by where it is defined: library functions by module,
qualified name, file, first line and bytecode; library classes and compiled library
callables (ufuncs, builtins) by module and qualified name, only when that name leads back
to the very object (a class made inside a factory has no such name). When something has no
such name (an opaque attribute taken by identity, a ``repr`` that shows a memory address),
``stable`` is None: the program is kept in memory only. Library *versions* and our own
sources are not part of it; :func:`inference.programs.cache.program_key` adds them.

Example:
    >>> def make(c):
    ...     def model():
    ...         return c * 2
    ...     return model
    >>> fingerprint(make(1.0)).digest == fingerprint(make(1.0)).digest
    True
    >>> fingerprint(make(1.0)).digest == fingerprint(make(2.0)).digest
    False
    >>> fingerprint(make(1.0)).stable == fingerprint(make(1.0)).stable != None
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import sys
import types
import weakref
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["fingerprint", "Fingerprint", "Unfingerprintable", "LIBRARIES"]

#: Top-level packages whose code is taken as fixed within a process (with the standard
#: library): their functions are fingerprinted by code identity and closure contents, without
#: following their globals. Patching them at run time (monkeypatching a module global they
#: read) is not seen, in memory nor on disk.
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
    """``digest``: hex string, valid in this process; ``identities``: objects the digest
    names by identity; ``stable``: hex string equal across processes, or None when some
    part has no process-independent name."""

    digest: str
    identities: tuple
    stable: str | None = None


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
    return Fingerprint(hasher.digest(), tuple(hasher.identities), hasher.stable_digest())


def _top(module: Any) -> str:
    return (module or "").partition(".")[0]


#: The standard library is fixed too (for one Python version, which the stable key holds).
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}


def _is_library(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (_top(module) in LIBRARIES or _top(module) in _STDLIB)


def _is_library_module(module: types.ModuleType) -> bool:
    return _top(module.__name__) in LIBRARIES or module.__name__ in sys.stdlib_module_names


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


# -- process-independent names of library objects (for Fingerprint.stable) --------------
# A repr that shows a memory address differs in every process.
_ADDRESS = re.compile(rb" at 0x[0-9a-fA-F]+")
_CODE_NAMES: "weakref.WeakKeyDictionary[types.CodeType, bytes]" = weakref.WeakKeyDictionary()
_CLASS_NAMES: "weakref.WeakKeyDictionary[type, tuple | None]" = weakref.WeakKeyDictionary()


def _const_token(const: Any) -> Any:
    """A repr-able, process-independent summary of a code constant."""
    if isinstance(const, types.CodeType):
        return ("code", _code_token(const))
    if isinstance(const, (frozenset, set)):  # iteration order follows string hashing
        return (type(const).__name__, sorted(repr(_const_token(c)) for c in const))
    if isinstance(const, tuple):
        return tuple(_const_token(c) for c in const)
    return const


def _code_token(code: types.CodeType) -> bytes:
    """Where ``code`` is defined (file, first line, qualified name) and what it runs
    (bytecode, names, constants: two lambdas on one line differ), as a digest."""
    try:
        return _CODE_NAMES[code]
    except KeyError:
        pass
    h = hashlib.blake2b(digest_size=16)
    qualname = getattr(code, "co_qualname", code.co_name)
    for part in (qualname, code.co_filename, code.co_firstlineno, code.co_names,
                 code.co_argcount, code.co_kwonlyargcount, code.co_flags):
        h.update(repr(part).encode() + b"\0")
    h.update(code.co_code)
    h.update(repr(tuple(_const_token(c) for c in code.co_consts)).encode())
    token = h.digest()
    _CODE_NAMES[code] = token
    return token


def _resolve(module: Any, qualname: Any) -> Any:
    """The object named ``module``.``qualname`` if that module is imported (else None)."""
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<" in qualname:
        return None
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (not a static C type)


def _class_name(cls: type) -> tuple | None:
    """``(module, qualname)`` of a library class when that name leads back to it, or of a
    static C type (``wrapper_descriptor``: one per interpreter, whatever its name)."""
    try:
        return _CLASS_NAMES[cls]
    except (KeyError, TypeError):
        pass
    name = (cls.__module__, cls.__qualname__)
    static = not getattr(cls, "__flags__", _HEAPTYPE) & _HEAPTYPE
    found = name if static or _resolve(*name) is cls else None
    try:
        _CLASS_NAMES[cls] = found
    except TypeError:  # not weakly referenceable
        pass
    return found


def _object_name(obj: Any) -> tuple | None:
    """``(type, module, name)`` of a compiled library callable (a ufunc, a builtin) when
    that name leads back to it."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    cls = type(obj)
    for module in (getattr(obj, "__module__", None), _top(cls.__module__)):
        if _resolve(module, name) is obj:
            return (f"{cls.__module__}.{cls.__qualname__}", module, name)
    return None


class _Hasher:
    """Two digests in one walk. The token stream names library objects by where they are
    defined (process-independent: the stable digest); the in-process digest adds the ids
    of the objects named by identity, in the order they were met."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=20)
        self._ids: list[int] = []
        self._seen: dict[int, int] = {}
        self._alive: list[Any] = []  # keeps ids in _seen unique while hashing
        self.identities: list[Any] = []
        self.stable_ok = True

    def digest(self) -> str:
        h = self._h.copy()
        h.update(b"identities")
        h.update(repr(self._ids).encode())
        return h.hexdigest()

    def stable_digest(self) -> str | None:
        return self._h.hexdigest() if self.stable_ok else None

    def _put(self, *tokens: Any) -> None:
        for token in tokens:
            if isinstance(token, bytes):
                data = token
            else:
                data = repr(token).encode()
                if self.stable_ok and b" at 0x" in data and _ADDRESS.search(data):
                    self.stable_ok = False  # a memory address: this process only
            self._h.update(len(data).to_bytes(8, "little"))
            self._h.update(data)

    def _identity(self, tag: str, obj: Any, name: Any) -> None:
        """``obj`` by identity in this process, by ``name`` across processes (None: it
        has no process-independent name)."""
        self.identities.append(obj)
        self._ids.append(id(obj))
        if name is None:
            self.stable_ok = False
        self._put(tag, type(obj).__qualname__, name)

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
        if isinstance(obj, (dict, types.MappingProxyType)):
            self._put(type(obj).__qualname__, len(obj))
            for k, v in obj.items():
                self.add(k)
                self.add(v)
            return
        if isinstance(obj, (set, frozenset)):  # in an order that does not follow hashing
            children = []
            for item in obj:
                child = _Hasher()
                child.add(item)
                children.append(child)
            children.sort(key=lambda c: (c._h.hexdigest(), c.digest()))
            self._put(type(obj).__qualname__, [c._h.hexdigest() for c in children])
            for child in children:
                self.identities.extend(child.identities)
                self._ids.extend(child._ids)
                self.stable_ok = self.stable_ok and child.stable_ok
            return
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
            return self._put("mesh", repr(obj), [d.id for d in obj.devices.flat])
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
            self._identity("libcode", fn.__code__, (fn.__module__, _code_token(fn.__code__)))
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
            names = sorted(_code_names(fn.__code__))
            for name in names:
                if name in module_globals:
                    self._put("global", name)
                    value = module_globals[name]
                    self.add(value)
                    if isinstance(value, types.ModuleType) and not _is_library_module(value):
                        # A user module read as `config.SCALE`: its attributes the code
                        # names are part of what the function computes.
                        attrs = vars(value)
                        for attr in names:
                            if attr in attrs and not attr.startswith("__"):
                                self._put("module-attr", value.__name__, attr)
                                self.add(attrs[attr])

    def _class(self, cls: type) -> None:
        if _is_library(cls):
            return self._identity("libclass", cls, _class_name(cls))
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
                self._identity("attr-identity", value, None)

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
        bound = getattr(obj, "__self__", None)
        if (isinstance(obj, (types.BuiltinMethodType, types.MethodWrapperType))
                and bound is not None and not isinstance(bound, types.ModuleType)):
            # A C method bound to an object (``frozenset(...).__contains__``): by the object.
            self._put("bound-builtin", getattr(obj, "__name__", None))
            self.add(type(bound))
            return self.add(bound)
        if _is_library(cls) or _is_library(obj):
            # A compiled library callable (a ufunc, a builtin, jax's C++ objects): fixed.
            return self._identity("libobject", obj, _object_name(obj))
        raise Unfingerprintable(f"cannot see the state of a {cls.__module__}.{cls.__qualname__}")
