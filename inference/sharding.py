"""Spreading chains, particles and data over devices with JAX's own SPMD runtime.

One compiled program runs on every device: the leading axis of the arrays that differ per
chain (or per particle, or per data point) is split over a one-axis device mesh
(:func:`jax.make_mesh`) by a :class:`jax.sharding.NamedSharding`, and XLA's partitioner
places the work where the data is. Nothing else changes: the same code, keys and results on
one device or many (see :func:`mesh_for`), on several hosts too once
``jax.distributed.initialize()`` has run (``jax.devices()`` then lists every host's devices).

Which devices (:func:`mesh_for`, the ``devices=`` argument of :func:`inference.infer`):

=============  ==========================================================================
``None``       on accelerators (GPU, TPU): every device JAX sees, when the axis length
               divides by their number; otherwise the largest number of them that
               divides it (6 chains on 4 GPUs -> 3 GPUs). On CPU devices (which share
               the host's cores) and on one device: no sharding at all.
``"all"``      every device; the axis length must divide by their number (else an error).
``int k``      the first ``k`` devices; ``k`` must divide the axis length.
a list         those devices (``jax.Device`` objects); their number must divide the length.
=============  ==========================================================================

Example:
    >>> import jax, jax.numpy as jnp
    >>> mesh = mesh_for("all", 4)           # one CPU device here: a 1-device mesh
    >>> x = put_leading(jnp.zeros((4, 3)), mesh, 4)
    >>> x.sharding.spec == PartitionSpec(AXIS)
    True
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "mesh_for", "default_device_count", "leading", "replicated", "constrain_leading", "put_leading",
           "put_replicated", "gather", "describe"]

#: The name of the mesh axis the leading (chain / particle / data) axis is split over.
AXIS = "shard"


def _make_mesh(devices: Sequence[Any]) -> Mesh:
    """A one-axis mesh over ``devices`` (automatic sharding propagation, as under ``jit``)."""
    try:
        from jax.sharding import AxisType

        return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,),
                             devices=list(devices))
    except (ImportError, TypeError):  # older JAX: no axis types, Mesh is automatic
        return Mesh(np.asarray(list(devices)), (AXIS,))


def default_device_count(available: Sequence[Any], length: int) -> int:
    """How many of ``available`` devices ``devices=None`` splits an axis of ``length`` over.

    On accelerators: the largest number of them that divides ``length``. On CPU devices: 1.
    Host-platform CPU "devices" (``--xla_force_host_platform_device_count``, which NumPyro's
    examples set) share the same cores, so splitting chains over them only adds
    partitioning and copies (a horseshoe regression's NUTS ran 5x slower on 4 of them).

    Example:
        >>> from types import SimpleNamespace
        >>> gpus = [SimpleNamespace(platform="gpu")] * 4
        >>> default_device_count(gpus, 6), default_device_count(gpus, 8)
        (3, 4)
        >>> default_device_count([SimpleNamespace(platform="cpu")] * 4, 8)
        1
    """
    if not available or available[0].platform == "cpu":
        return 1
    return max(d for d in range(1, len(available) + 1) if length % d == 0)


def mesh_for(devices: Any, length: int, *, what: str = "chains", owner: str = "infer",
             fallback: bool = True) -> Mesh | None:
    """The device mesh that splits an axis of ``length`` (chains, particles, a minibatch).

    ``None`` means: run on the default device, unsharded (one device seen, CPU devices under
    ``devices=None``, or ``devices=None`` with no usable split). See the module docstring for the accepted values; a number of
    devices that does not divide ``length`` is a ``ValueError`` naming both, except under
    ``devices=None`` which falls back to the largest number of devices that divides it
    (``fallback=False``: the caller has no such default, and the error does not offer it).

    Example:
        >>> mesh_for(None, 4) is None   # one device: nothing to shard
        True
        >>> mesh_for(1, 4).devices.size
        1
    """
    available = jax.devices()
    if devices is None:
        n = default_device_count(available, length)
        return None if n == 1 else _make_mesh(available[:n])
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"{owner}: devices={devices!r}; use None, 'all', a number of "
                             "devices, or a list of jax devices.")
        chosen = list(available)
    elif isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"{owner}: devices={devices} but JAX sees {len(available)} "
                             f"device(s) ({available[0].platform}).")
        chosen = list(available[: int(devices)])
    else:
        try:
            chosen = list(devices)
        except TypeError:
            raise ValueError(f"{owner}: devices={devices!r}; use None, 'all', a number of "
                             "devices, or a list of jax devices.") from None
        bad = [d for d in chosen if not isinstance(d, jax.Device)]
        if not chosen or bad:
            raise ValueError(f"{owner}: devices must be jax.Device objects (from "
                             f"jax.devices()); got {bad[:3] or chosen!r}.")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"{owner}: devices lists a device more than once: {chosen}.")
    if length % len(chosen):
        ok = [d for d in range(1, len(chosen) + 1) if length % d == 0]
        raise ValueError(
            f"{owner}: {length} {what} cannot be split evenly over {len(chosen)} devices. "
            f"Use a multiple of {len(chosen)} {what}, or fewer devices (devices={max(ok)} "
            f"divides {length})"
            + (", or devices=None to pick the largest number that divides." if fallback else ".")
        )
    return _make_mesh(chosen)


def leading(mesh: Mesh) -> NamedSharding:
    """The sharding that splits an array's leading axis over ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a whole copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def _is_split(x: Any, length: int) -> bool:
    return hasattr(x, "shape") and len(x.shape) > 0 and x.shape[0] == length


def constrain_leading(tree: Any, mesh: Mesh | None, length: int) -> Any:
    """Inside ``jit``: split every leaf whose leading axis has ``length`` over ``mesh``
    (the others replicated). The identity when ``mesh`` is None."""
    if mesh is None:
        return tree
    split, whole = leading(mesh), replicated(mesh)
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, split if _is_split(x, length) else whole),
        tree,
    )


def put_leading(tree: Any, mesh: Mesh | None, length: int) -> Any:
    """Outside ``jit``: place the leaves whose leading axis has ``length`` split over ``mesh``
    (the others are left to ``jit``, which copies them to every device). Every process of a
    multi-host run must pass the same values (they do: they come from the same key)."""
    if mesh is None:
        return tree
    split = leading(mesh)

    def place(x):
        if not _is_split(x, length) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, split, lambda index: host[index])

    return jax.tree.map(place, tree)


def put_replicated(tree: Any, mesh: Mesh | None) -> Any:
    """Outside ``jit``: a whole copy of every array leaf on each device of ``mesh`` (also
    across hosts; every process must pass the same values)."""
    if mesh is None:
        return tree
    whole = replicated(mesh)

    def place(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, whole, lambda index: host[index])

    return jax.tree.map(place, tree)


def gather(tree: Any) -> Any:
    """Arrays this process can read whole: on several hosts (``jax.distributed``) the shards
    held by other processes are fetched once (``process_allgather``); otherwise the identity.

    Example:
        >>> import jax.numpy as jnp
        >>> gather({"x": jnp.ones(2)})["x"].tolist()
        [1.0, 1.0]
    """
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: x if getattr(x, "is_fully_addressable", True)
        else multihost_utils.process_allgather(x, tiled=True),
        tree,
    )


def describe(mesh: Mesh | None) -> int:
    """How many devices ``mesh`` spans (1 for ``None``)."""
    return 1 if mesh is None else int(mesh.devices.size)
