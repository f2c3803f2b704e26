"""Building the installed ArviZ's own data structure, whichever ArviZ line is installed.

ArviZ 1.x (Python 3.12+) returns an ``xarray.DataTree`` from
``from_dict(data={group: {...}})``; ArviZ 0.x (what pip serves on Python 3.11) returns
an ``InferenceData`` from ``from_dict(posterior=..., sample_stats=..., ...)``. This
module is the one place that knows both.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np


def import_arviz():
    """ArviZ, imported without its 1.x-migration notices (``import_arviz().plot_trace(...)``)."""
    with warnings.catch_warnings():
        # ArviZ 0.23 announces the 1.x migration on import; nothing for our users to act on.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        import arviz
    return arviz


def arviz_major_version() -> int:
    """Major version of the installed ArviZ (0 or 1)."""
    return int(import_arviz().__version__.split(".")[0])


def from_groups(
    groups: Mapping[str, Mapping[str, Any]],
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
) -> Any:
    """ArviZ data from ``{group name: {variable: array}}``.

    Sample groups (``posterior``, ``sample_stats``, ``log_likelihood``, ...) hold arrays of
    shape (chain, draw, ...); ``observed_data`` holds plain arrays. Empty groups are dropped.

    Example:
        >>> import numpy as np
        >>> data = from_groups({"posterior": {"x": np.zeros((2, 10))}})
        >>> tuple(np.asarray(data["posterior"]["x"]).shape)
        (2, 10)
    """
    az = import_arviz()
    groups = {
        name: {k: np.asarray(v) for k, v in group.items()}
        for name, group in groups.items()
        if group
    }
    if arviz_major_version() >= 1:
        return az.from_dict(data=groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)
