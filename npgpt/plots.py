"""Plots shared by every pipeline (training curves, finetuning accuracy, the demo, benchmarks).

matplotlib is imported inside the functions with the non-interactive Agg backend, so importing this
module is cheap and plotting works on machines without a screen. Files are written atomically.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

from npgpt.fileio import atomic_write_bytes


def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Renders a matplotlib figure to PNG (atomically) and closes it."""
    plt = pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def _finite_points(xs: Sequence[float], ys: Sequence[float | None]):
    """(x, y) pairs where y is a finite number; series logged only at eval steps hold None elsewhere."""
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(path: str | os.PathLike, x: Sequence[float], series: dict[str, Sequence[float | None]], *,
                xlabel: str = "step", ylabel: str = "loss", title: str | None = None,
                secondary_x: tuple[str, Sequence[float]] | None = None, logy: bool = False) -> Path:
    """One PNG with a line per named series against x; None/NaN entries are skipped (eval-only series).

    secondary_x = ("tokens seen", values aligned with x) adds a second x axis on top, as the book's
    loss plot does (steps below, tokens seen above).
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.0))
    for label, ys in series.items():
        xs, ys = _finite_points(x, ys)
        if xs:
            axis.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if logy:
        axis.set_yscale("log")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    if secondary_x is not None and len(x) >= 2:
        label, values = secondary_x
        add_secondary_axis(axis, x, values, label)
    return save_figure(figure, path)


def add_secondary_axis(axis, x: Sequence[float], values: Sequence[float], label: str):
    """A second x axis on top of `axis` labelled with `values` (a monotone function of x, e.g. tokens seen)."""
    import numpy as np

    top = axis.twiny()
    top.set_xlim(axis.get_xlim())
    # Ticks of the bottom axis that fall inside the logged range; values in between are interpolated.
    ticks = [t for t in axis.get_xticks() if min(x) <= t <= max(x)]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{v:,.0f}" for v in np.interp(ticks, list(x), list(values))], fontsize=7)
    top.set_xlabel(label)
    return top
