"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Every figure is ``FIGURE_WIDTH_INCHES x FIGURE_HEIGHT_INCHES`` at ``FIGURE_DPI``, i.e.
800 x 450 pixels, so the HTML and the tests know its size.
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurodec.metrics import BRAIN_TO_STIMULUS

FIGURE_WIDTH_INCHES = 8.0
FIGURE_HEIGHT_INCHES = 4.5
FIGURE_DPI = 100
_N_WAY = re.compile(r"^(\d+)-way top-(\d+)$")


@dataclass
class RenderedFigure:
    """A PNG figure: ``name`` (an id), a caption and the encoded bytes."""

    name: str
    caption: str
    png: bytes = field(repr=False)
    width: int = int(FIGURE_WIDTH_INCHES * FIGURE_DPI)
    height: int = int(FIGURE_HEIGHT_INCHES * FIGURE_DPI)

    def base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


def _new_figure(n_columns: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, FIGURE_HEIGHT_INCHES), dpi=FIGURE_DPI, layout="constrained")
    axes = figure.subplots(1, n_columns, squeeze=False)[0]
    return figure, list(axes)


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No bbox_inches="tight": the pixel size must stay the documented one.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _all_entries(results: dict) -> list[tuple[str, dict]]:
    return list(results["retrieval"].items()) + list(results["baselines"].items())


def n_way_curves(metrics: dict, k: int) -> tuple[list[int], list[float], list[list[float]]]:
    """N values, pooled brain->stimulus top-k accuracy and intervals (empty list when absent)."""
    section = metrics[BRAIN_TO_STIMULUS]
    points = []
    for name, value in section["pooled"].items():
        match = _N_WAY.match(name)
        if match and int(match.group(2)) == k:
            points.append((int(match.group(1)), value, section["interval"].get(name) or []))
    points.sort()
    return [n for n, _, _ in points], [value for _, value, _ in points], [interval for _, _, interval in points]


def topk_against_n_figure(results: dict) -> RenderedFigure | None:
    """Top-1 and top-5 accuracy (brain->stimulus, pooled, 95% CI) against N, with the chance curve k / N."""
    ks = sorted({int(match.group(2)) for _, entry in _all_entries(results)
                 for name in entry["metrics"][BRAIN_TO_STIMULUS]["pooled"] if (match := _N_WAY.match(name))})
    ks = [k for k in ks if k in (1, 5)] or ks[:2]
    if not ks:
        return None
    figure, axes = _new_figure(len(ks))
    for axis, k in zip(axes, ks):
        all_n: set[int] = set()
        for name, entry in _all_entries(results):
            n_values, accuracy, intervals = n_way_curves(entry["metrics"], k)
            if not n_values:
                continue
            all_n.update(n_values)
            errors = None
            if all(len(interval) == 2 for interval in intervals):
                errors = np.abs(np.array(intervals).T - np.array(accuracy)) * 100
            axis.errorbar(n_values, np.array(accuracy) * 100, yerr=errors, marker="o", capsize=3, label=name)
        grid = np.array(sorted(all_n))
        axis.plot(grid, 100 * k / grid, linestyle="--", color="black", label="chance")
        axis.set_xscale("log")
        axis.set_xticks(grid, [str(n) for n in grid])
        axis.set_xlabel("N (candidates per query)")
        axis.set_ylabel(f"top-{k} accuracy (%)")
        axis.set_title(f"N-way top-{k}, brain->stimulus")
        axis.set_ylim(0, 100)
    axes[0].legend(fontsize="small")
    return RenderedFigure("topk_against_n", "N-way top-k accuracy (brain->stimulus, pooled, 95% CI) "
                          "against N, with chance k/N", _png(figure))


def headline_metric(results: dict) -> str | None:
    """The N-way top-1 with the largest N that every entry has (e.g. ``"200-way top-1"``)."""
    common = None
    for _, entry in _all_entries(results):
        names = set(entry["metrics"][BRAIN_TO_STIMULUS]["pooled"])
        common = names if common is None else common & names
    candidates = [(int(match.group(1)), name) for name in common or () if (match := _N_WAY.match(name))
                  and match.group(2) == "1"]
    return max(candidates)[1] if candidates else None


def wilson_interval(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion measured on ``n`` queries.

    >>> [round(value, 4) for value in wilson_interval(0.5, 100)]
    [0.4038, 0.5962]
    """
    denominator = 1 + z * z / n
    center = (accuracy + z * z / (2 * n)) / denominator
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def per_subject_figure(results: dict) -> RenderedFigure | None:
    """Bars of the headline metric per subject and entry, Wilson 95% intervals, chance line."""
    metric = headline_metric(results)
    if metric is None:
        return None
    entries = _all_entries(results)
    subjects = []
    for _, entry in entries:
        subjects += [subject for subject in entry["metrics"]["subjects"] if subject not in subjects]
    figure, (axis,) = _new_figure()
    width = 0.8 / len(entries)
    positions = np.arange(len(subjects))
    for index, (name, entry) in enumerate(entries):
        metrics = entry["metrics"]
        heights, low, high, where = [], [], [], []
        for position, subject in zip(positions, subjects):
            value = metrics[BRAIN_TO_STIMULUS]["per_subject"].get(subject, {}).get(metric)
            if value is None:
                continue
            lower, upper = wilson_interval(value, metrics["n_items"][subject])
            heights.append(100 * value)
            low.append(100 * (value - lower))
            high.append(100 * (upper - value))
            where.append(position + (index - (len(entries) - 1) / 2) * width)
        axis.bar(where, heights, width=width, yerr=[low, high], capsize=3, label=name)
    chance = next(entry["metrics"]["chance"]["pooled"][metric] for _, entry in entries)
    axis.axhline(100 * chance, linestyle="--", color="black", label="chance")
    axis.set_xticks(positions, subjects)
    axis.set_xlabel("subject")
    axis.set_ylabel(f"{metric} accuracy (%)")
    axis.set_title(f"{metric} per subject, brain->stimulus")
    axis.legend(fontsize="small")
    return RenderedFigure("per_subject", f"{metric} (brain->stimulus) per subject; error bars: Wilson 95% "
                          "intervals over the subject's queries", _png(figure))


def similarity_figure(excerpt: dict | None) -> RenderedFigure | None:
    """The similarity-matrix excerpt as an image (the diagonal holds the true pairs)."""
    if excerpt is None:
        return None
    matrix = np.asarray(excerpt["matrix"], dtype=np.float64)
    figure, (axis,) = _new_figure()
    image = axis.imshow(matrix, cmap="viridis", interpolation="nearest", aspect="equal")
    figure.colorbar(image, ax=axis, label=excerpt.get("similarity", "cosine") + " similarity")
    axis.set_ylabel(excerpt["rows"])
    axis.set_xlabel(excerpt["columns"])
    axis.set_title(f"similarity excerpt ({matrix.shape[0]} x {matrix.shape[1]})")
    return RenderedFigure("similarity_excerpt", f"similarity of {excerpt['rows']} (rows) and "
                          f"{excerpt['columns']} (columns); true pairs on the diagonal", _png(figure))


def training_figure(history: list[dict]) -> RenderedFigure | None:
    """Losses (left) and other logged quantities, e.g. validation metrics (right), against step."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in history:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = series.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    if not series:
        return None
    losses = {key: value for key, value in series.items() if "loss" in key}
    others = {key: value for key, value in series.items() if "loss" not in key}
    groups = [(title, group) for title, group in (("losses", losses), ("other quantities", others)) if group]
    figure, axes = _new_figure(len(groups))
    for axis, (title, group) in zip(axes, groups):
        for key, (steps, values) in group.items():
            axis.plot(steps, values, marker=".", label=key)
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.legend(fontsize="small")
    return RenderedFigure("training_curves", "training history: logged quantities against step", _png(figure))


def reconstruction_grid_figures(results: dict) -> list[RenderedFigure]:
    """The grid PNG of each reconstruction entry (ground truth above reconstruction), embedded as it is."""
    from PIL import Image

    figures = []
    for name, entry in results.get("reconstruction", {}).items():
        grid = entry.get("grid")
        if not grid or not Path(grid).exists():
            continue
        with Image.open(grid) as image:
            width, height = image.size
        scale = max(1, 900 // max(width, 1))
        figures.append(RenderedFigure(f"reconstruction_grid_{len(figures)}",
                                      f"{name}: ground truth (upper row of each pair) and reconstruction (lower row)",
                                      Path(grid).read_bytes(), width=width * scale, height=height * scale))
    return figures


def render_figures(results: dict) -> list[RenderedFigure]:
    """Every figure the validated ``results`` have data for, in report order."""
    figures = [
        topk_against_n_figure(results),
        per_subject_figure(results),
        similarity_figure(results["similarity_excerpt"]),
        training_figure(results["training_history"]),
        *reconstruction_grid_figures(results),
    ]
    return [figure for figure in figures if figure is not None]
