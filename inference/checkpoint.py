"""Where MCMC chains stand, on disk: checkpoints of a running ``infer`` and saved Results.

A :class:`ChainState` is what :func:`inference.chains.run_chains` leaves after a run: the
sampler's state (positions, step sizes, mass matrices, ...) as host arrays, the run's key
and the loop step reached. ``Result.extend`` continues from it; ``Result.save`` writes it.

Files are NumPy ``.npz`` archives of plain arrays plus one JSON string: no pickled
functions or objects, so a file does not depend on the model's code being importable. The
structure of the sampler's state (its pytree) is not stored: it is rebuilt from the model
and the method when the state is used again, and the stored arrays are checked against it.

Writes are atomic (a temporary file renamed over the old one), so a crash while writing
leaves the previous checkpoint whole.

Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.npz")
    >>> write_archive(path, {"a": np.arange(3)}, {"note": "demo"})
    >>> arrays, meta = read_archive(path)
    >>> arrays["a"].tolist(), meta["note"]
    ([0, 1, 2], 'demo')
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ChainState", "write_archive", "read_archive", "read_checkpoint", "to_host",
           "method_to_json", "method_from_json", "data_digest"]

FORMAT = 1


@dataclass
class ChainState:
    """Where a run's chains stand: enough to continue them (opaque; see ``Result.extend``).

    Attributes:
        leaves: the sampler's state, flattened, as host (NumPy) arrays.
        treedef: its pytree structure; ``None`` after loading from a file (rebuilt from the
            model and method when the chains continue).
        key, key_impl: the raw data and implementation name of the run's key.
        t: the next loop step (each step's key is ``fold_in(run_key, t)``).
        num_warmup: the warmup length the sampler was built with.
        num_chains: chains.
        draws: kept draws made so far; ``requested``: kept draws asked for (fewer when the
            run was interrupted).
        context: what the sampler needs besides its arrays to continue, kept in memory only
            (``Learned``: its fitted proposal); not written to files.
    """

    leaves: list
    treedef: Any
    key: np.ndarray
    key_impl: str
    t: int
    num_warmup: int
    num_chains: int
    draws: int
    requested: int
    context: Any = None

    @property
    def interrupted(self) -> bool:
        return self.draws < self.requested

    def run_key(self) -> jax.Array:
        return jax.random.wrap_key_data(np.asarray(self.key), impl=self.key_impl)

    def meta(self) -> dict:
        return {"key_impl": self.key_impl, "t": self.t, "num_warmup": self.num_warmup,
                "num_chains": self.num_chains, "draws": self.draws,
                "requested": self.requested, "num_leaves": len(self.leaves)}

    @classmethod
    def from_meta(cls, meta: dict, arrays: dict, prefix: str) -> "ChainState":
        leaves = [arrays[f"{prefix}leaf{i}"] for i in range(meta["num_leaves"])]
        return cls(leaves, None, arrays[f"{prefix}key"], meta["key_impl"], meta["t"],
                   meta["num_warmup"], meta["num_chains"], meta["draws"], meta["requested"])

    def arrays(self, prefix: str) -> dict:
        out = {f"{prefix}leaf{i}": x for i, x in enumerate(self.leaves)}
        out[f"{prefix}key"] = np.asarray(self.key)
        return out


def to_host(x: Any) -> np.ndarray:
    """A leaf as a NumPy array (typed PRNG keys as their raw data)."""
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def write_archive(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` (atomically)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    payload = {name: np.asarray(x) for name, x in arrays.items()}
    payload["__meta__"] = np.asarray(json.dumps({"format": FORMAT, **meta}))
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_archive(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` from a file written by :func:`write_archive`."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a file written by inference (result.save or a "
                         f"checkpoint): {err}") from err
    if "__meta__" not in arrays:
        raise ValueError(f"{path!r} is not a file written by inference (result.save or a "
                         "checkpoint): it has no metadata entry.")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}; this version reads "
                         f"format {FORMAT}.")
    return arrays, meta


def read_checkpoint(path: str | os.PathLike, fingerprint: dict) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of the checkpoint at ``path``, checked to come from the run that
    ``fingerprint`` describes (a JSON-able dict: settings, counts, key, data digest). A saved
    Result, or a checkpoint whose stored fingerprint differs, is a ``ValueError`` naming
    the entries that differ and their values in the file.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "ck.npz")
        >>> write_archive(path, {}, {"kind": "checkpoint", "run": {"num_chains": 2}})
        >>> read_checkpoint(path, {"num_chains": 2})[1]["run"]
        {'num_chains': 2}
        >>> try:
        ...     read_checkpoint(path, {"num_chains": 4})
        ... except ValueError as err:
        ...     print("differs in num_chains (file: num_chains=2)" in str(err))
        True
    """
    arrays, meta = read_archive(path)
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"checkpoint={os.fspath(path)!r} is a saved Result, not a "
                         "checkpoint; pass another path (inference.load_result reads it).")
    stored = meta.get("run") or {}
    differ = sorted(k for k in set(stored) | set(fingerprint)
                    if stored.get(k) != fingerprint.get(k))
    if differ:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was written by a different run: it differs "
            f"in {', '.join(differ)} (file: "
            + ", ".join(f"{k}={stored.get(k)!r}" for k in differ if k != "key") + "). "
            "Call infer with the same settings to resume it, or delete the file (or "
            "pass another checkpoint path) to start afresh.")
    return arrays, meta


def method_to_json(method: Any) -> tuple[dict | None, dict[str, np.ndarray]]:
    """A method object as ``(json, arrays)``: its class and dataclass fields (array fields
    go to ``arrays``). ``(None, {})`` when it cannot be written that way."""
    if method is None or not dataclasses.is_dataclass(method):
        return None, {}
    fields, arrays = {}, {}
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if value is None or isinstance(value, (bool, int, float, str)):
            fields[f.name] = value
        elif isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str))
                                              for v in value):
            fields[f.name] = {"tuple": list(value)}
        elif isinstance(value, (np.ndarray, jax.Array, np.generic)):
            arrays[f"method/{f.name}"] = np.asarray(value)
            fields[f.name] = {"array": f"method/{f.name}"}
        else:
            return None, {}
    cls = type(method)
    return {"module": cls.__module__, "name": cls.__qualname__, "fields": fields}, arrays


def method_from_json(spec: dict | None, arrays: dict) -> Any:
    """The method object :func:`method_to_json` wrote, or ``None`` if it cannot be rebuilt."""
    if spec is None:
        return None
    try:
        cls = getattr(importlib.import_module(spec["module"]), spec["name"])
        fields = {k: (v if not isinstance(v, dict) else tuple(v["tuple"]) if "tuple" in v
                      else arrays[v["array"]])
                  for k, v in spec["fields"].items()}
        return cls(**fields)
    except (ImportError, AttributeError, TypeError, ValueError, KeyError):
        return None


def data_digest(tree: Any) -> str:
    """A digest of the array values and structure of ``tree`` (the data a run is conditioned
    on), so a checkpoint is not resumed on other data. Functions count by name (the same in
    a new process); the model's code is not part of it.

    Example:
        >>> import numpy as np
        >>> data = (np.ones(3), {"link": np.exp})
        >>> data_digest(data) == data_digest((np.ones(3), {"link": np.exp}))
        True
        >>> data_digest((np.ones(3),)) == data_digest((np.zeros(3),))
        False
    """
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h.update(str(treedef).encode())
    for x in leaves:
        if hasattr(x, "shape") or isinstance(x, (int, float, bool, complex)):
            a = to_host(x)
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        elif callable(x):  # by name: a function's repr holds its address, new each process
            name = getattr(x, "__qualname__", type(x).__qualname__)
            h.update(f"{getattr(x, '__module__', '')}.{name}".encode())
        else:
            h.update(repr(x).encode())
    return h.hexdigest()[:32]


def unflatten_like(like: Any, leaves: list, where: Any) -> Any:
    """``leaves`` in the structure of ``like`` (shapes and dtypes checked)."""
    expected, treedef = jax.tree_util.tree_flatten(like)
    ok = len(expected) == len(leaves) and all(
        tuple(e.shape) == tuple(np.shape(v)) for e, v in zip(expected, leaves))
    if not ok:
        raise ValueError(
            f"{where!s} does not fit this model and method: it holds {len(leaves)} arrays of "
            f"shapes {[tuple(np.shape(v)) for v in leaves][:6]}..., the sampler's state has "
            f"{len(expected)} of shapes {[tuple(e.shape) for e in expected][:6]}.... Pass the "
            "model, data and method the state was made with.")
    out = []
    for e, v in zip(expected, leaves):
        if jax.dtypes.issubdtype(e.dtype, jax.dtypes.prng_key):
            out.append(jax.random.wrap_key_data(jnp.asarray(v)))
        else:
            out.append(jnp.asarray(v, e.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
