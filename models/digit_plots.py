"""Rows of 8x8 digit images in one figure: what the digit examples draw after training.

Example (writes a PNG):
    >>> import os, tempfile, numpy as np
    >>> from models.digit_plots import plot_digit_rows
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.png")
    >>> images = np.random.default_rng(0).uniform(size=(3, 64))
    >>> plot_digit_rows(path, [("noise", images), ("signed", images - 0.5, "RdBu", -0.5, 0.5)], n=3)
    >>> os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_digit_rows"]


def plot_digit_rows(path: str, rows: Sequence[tuple], n: int = 10,
                    cell: tuple[float, float] = (0.9, 1.05)) -> None:
    """Save a grid of digit images to ``path``: one labelled row per entry of ``rows``.

    Each row is ``(label, images)`` or ``(label, images, cmap, vmin, vmax)`` (default
    ``"gray_r"``, 0, 1); ``images`` has at least one image of 64 pixels per column, and the
    first ``n`` are drawn. ``cell`` is the (width, height) in inches of one image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), n, figsize=(n * cell[0], len(rows) * cell[1]),
                             squeeze=False)
    for r, row in enumerate(rows):
        label, images, cmap, vmin, vmax = _row(row)
        images = np.asarray(images)
        for c in range(n):
            ax = axes[r, c]
            if c < images.shape[0]:
                ax.imshow(images[c].reshape(8, 8), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _row(row: tuple) -> tuple[str, Any, str, float, float]:
    if len(row) == 2:
        return row[0], row[1], "gray_r", 0.0, 1.0
    if len(row) == 5:
        return tuple(row)
    raise ValueError(f"plot_digit_rows: a row is (label, images) or (label, images, cmap, "
                     f"vmin, vmax); got {len(row)} items.")
