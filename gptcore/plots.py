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

from gptcore.fileio import atomic_write_bytes


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


def plot_panels(path: str | os.PathLike, panels: dict[str, tuple[Sequence[float], dict[str, Sequence[float | None]]]],
                *, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, ncols: int = 3,
                title: str | None = None) -> Path:
    """One PNG with a grid of small line plots: panels = {panel title: (x, {label: ys})}.

    Lines with the same label get the same colour in every panel (one legend for all), e.g. one
    panel per benchmarked component and one line per backend.
    """
    plt = pyplot()
    ncols = max(1, min(ncols, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows), squeeze=False)
    labels = list(dict.fromkeys(label for _, series in panels.values() for label in series))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for axis, (panel_title, (x, series)) in zip(axes.flat, panels.items()):
        for label, ys in series.items():
            xs, ys = _finite_points(x, ys)
            if xs:
                axis.plot(xs, ys, label=label, color=colours[label], marker="o", markersize=3)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        if logx:
            axis.set_xscale("log")
        if logy:
            axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[label], marker="o", markersize=3) for label in labels]
    figure.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 1.02))
    if title:
        figure.suptitle(title, y=1.07)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_bars(path: str | os.PathLike, categories: Sequence[str], series: dict[str, Sequence[float | None]], *,
              ylabel: str, title: str | None = None, reference: float | None = None, logy: bool = False) -> Path:
    """Grouped bars: one group per category, one bar per series (None: no bar); `reference` draws a
    horizontal line (e.g. 1.0 for a ratio)."""
    import numpy as np

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) + 2), 4.0))
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(categories))
    for i, (label, values) in enumerate(series.items()):
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = axis.bar(positions + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
        for bar, value in zip(bars, values):
            if value is not None and math.isfinite(value):
                axis.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=7)
    if reference is not None:
        axis.axhline(reference, color="black", linewidth=0.8, linestyle="--")
    axis.set_xticks(positions)
    axis.set_xticklabels(categories, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    if logy:
        axis.set_yscale("log")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    return save_figure(figure, path)
