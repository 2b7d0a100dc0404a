"""``write_report``: report.json, report.md and report.html from one results dict."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurodec.report.schema import validate_results
from neurodec.report.tables import (
    Block,
    baselines_table,
    format_speech_summary,
    markdown_table_blocks,
    comparison_table,
    detail_table,
    entries,
    format_summary_table,
    modalities,
    per_subject_table,
    protocol_text,
    provenance_table,
    render_html,
    render_markdown,
    speech_per_subject_table,
    speech_protocol_text,
    speech_seeds_table,
    speech_table,
    training_table,
)
from neurodec.metrics import DIRECTIONS

logger = logging.getLogger("neurodec")

REPORT_FORMAT_VERSION = 1
JSON_NAME, MARKDOWN_NAME, HTML_NAME = "report.json", "report.md", "report.html"
REPORT_FILE_MODE = 0o644


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the three files."""

    json: Path
    markdown: Path
    html: Path


def similarity_excerpt(brain, targets, *, size: int = 50, rows: str = "brain embeddings",
                       columns: str = "target embeddings", similarity: str = "cosine") -> dict:
    """The ``similarity_excerpt`` section: similarities of the first ``size`` items, both ways.

    >>> import numpy as np
    >>> vectors = np.eye(3)
    >>> similarity_excerpt(vectors, vectors, size=2)["matrix"]
    [[1.0, 0.0], [0.0, 1.0]]
    """
    from neurodec.metrics import similarity_matrix

    matrix = similarity_matrix(np.asarray(brain)[:size], np.asarray(targets)[:size], similarity=similarity)
    return {"matrix": np.asarray(matrix.cpu(), dtype=np.float64).tolist(), "rows": rows, "columns": columns,
            "similarity": similarity}


def _generated() -> dict:
    import neurodec

    return {
        "generated (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "neurodec version": neurodec.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _blocks(results: dict, title: str, generated: dict, figures: list) -> list[Block]:
    blocks = [Block("heading", title, level=1),
              Block("text", f"Generated {generated['generated (UTC)']} UTC by neurodec {generated['neurodec version']}. "
                            "Accuracies, chance levels and intervals in percent.")]
    blocks += [Block("heading", "Summary"), Block("code", format_summary_table(results))]
    if results["speech"]:
        blocks.append(Block("code", format_speech_summary(results)))
    for what, reason in (results["meta"].get("skipped") or {}).items():  # e.g. over evaluation.max_memory_gb
        blocks.append(Block("text", f"Not computed: {what}: {reason}"))
    blocks += [Block("heading", "Provenance"), Block("table", table=provenance_table(results, generated)),
               Block("heading", "Config", level=3),
               Block("code", json.dumps(results["meta"]["config"], indent=2, sort_keys=True))]
    blocks.append(Block("heading", "Comparison with baselines and chance (pooled over subjects)"))
    for modality in modalities(results):
        for direction in DIRECTIONS:
            blocks += [Block("heading", f"{modality}, {direction}", level=3),
                       Block("table", table=comparison_table(results, modality, direction))]
    for name, role, entry in entries(results):
        metrics = entry["metrics"]
        kind = f"model {entry['model']}" if role == "model" else f"baseline {entry['kind']}"
        names = list(metrics[DIRECTIONS[0]]["pooled"])
        n_way = [metric for metric in names if not metric.startswith("full-set")]
        full_set = [metric for metric in names if metric.startswith("full-set")]
        blocks += [Block("heading", f"Retrieval: {name}"),
                   Block("text", f"{entry['modality']}, {kind}. " + protocol_text(metrics)
                         + (f" {entry['note']}" if entry.get("note") else ""))]
        if n_way:
            blocks += [Block("heading", f"{name}: N-way retrieval", level=3), Block("table", table=detail_table(metrics, n_way))]
        if full_set:
            blocks += [Block("heading", f"{name}: full-set ranking", level=3),
                       Block("table", table=detail_table(metrics, full_set))]
        blocks += [Block("heading", f"{name}: per subject", level=3), Block("table", table=per_subject_table(metrics))]
    if results["speech"]:
        blocks += _speech_blocks(results["speech"])
    if results["baselines"]:
        blocks += [Block("heading", "Baselines"), Block("table", table=baselines_table(results))]
    if results["reconstruction"]:
        from neurodec.metrics import format_image_metrics_table

        blocks.append(Block("heading", "Image reconstruction"))
        for name, entry in results["reconstruction"].items():
            settings = entry.get("settings", {})
            described = ", ".join(f"{key} {value}" for key, value in settings.items() if value is not None)
            blocks += [Block("heading", name, level=3),
                       Block("text", f"{entry['modality']}; {entry.get('n_images', '?')} reconstructions of "
                                     f"{', '.join(entry.get('subjects', [])) or 'all subjects'}"
                                     + (f"; {described}" if described else "") + "."),
                       *markdown_table_blocks(format_image_metrics_table(entry, name))]
    if results["training_history"]:
        blocks += [Block("heading", "Training history"), Block("table", table=training_table(results["training_history"]))]
    if figures:
        blocks.append(Block("heading", "Figures"))
        blocks += [Block("figure", figure=figure) for figure in figures]
    return blocks


def _speech_blocks(speech: dict) -> list[Block]:
    """The speech section: mean ± sd over seeds, every run and baseline with CI and chance, per subject."""
    blocks = [Block("heading", "Speech segment retrieval")]
    evaluated = {name: entry for name, entry in speech.items() if "metrics" in entry}
    if evaluated:
        blocks.append(Block("text", speech_protocol_text(next(iter(evaluated.values()))["metrics"])))
    if any("over_seeds" in entry for entry in speech.values()):
        blocks += [Block("heading", "Mean and sd over seeds (pooled values of each seed's run)", level=3),
                   Block("table", table=speech_seeds_table(speech))]
    if evaluated:
        blocks += [Block("heading", "Runs and baselines (pooled over subjects)", level=3),
                   Block("table", table=speech_table(speech))]
    for name, entry in evaluated.items():
        blocks += [Block("heading", f"{name}: speech, per subject", level=3),
                   Block("table", table=speech_per_subject_table(entry["metrics"]))]
    return blocks


def _stage(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file next to ``name`` (same filesystem, so os.replace is atomic)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes owner-only files; a report is meant to be shared like any other file.
        os.chmod(temporary, REPORT_FILE_MODE)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def write_report(out_dir, results: dict, *, title: str, figures: bool = True) -> ReportPaths:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir``.

    ``results`` follows the schema of docs/reports.md (sections ``meta``, ``retrieval``,
    ``baselines``, ``training_history``, ``similarity_excerpt``) and is validated first
    (:class:`neurodec.errors.ReportInputError` names what is wrong). ``report.json`` holds
    the validated results unchanged plus a ``report`` section (title, format version, when,
    figures); ``report.md`` the tables; ``report.html`` the tables and the figures as
    embedded base64 PNGs, readable offline. All three files are rendered and written to
    temporary files first, then each replaces its predecessor with ``os.replace``: a crash
    leaves the previous report or the new one, never a half-written file.

    >>> paths = write_report("runs/eeg-nice", results, title="EEG to image")   # doctest: +SKIP
    >>> paths.html                                                             # doctest: +SKIP
    PosixPath('runs/eeg-nice/report.html')
    """
    results = validate_results(results)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    generated = _generated()
    rendered = []
    if figures:
        from neurodec.report.figures import render_figures

        rendered = render_figures(results)
    blocks = _blocks(results, title, generated, rendered)
    document = {
        "report": {"title": title, "format_version": REPORT_FORMAT_VERSION, **generated,
                   "figures": [figure.name for figure in rendered]},
        **results,
    }
    contents = {
        JSON_NAME: json.dumps(document, indent=1, allow_nan=False).encode("utf-8"),
        MARKDOWN_NAME: render_markdown(blocks).encode("utf-8"),
        HTML_NAME: render_html(blocks, title).encode("utf-8"),
    }
    staged: dict[str, Path] = {}
    try:
        for name, data in contents.items():
            staged[name] = _stage(directory, name, data)
        for name, temporary in staged.items():
            os.replace(temporary, directory / name)
    finally:
        for temporary in staged.values():
            if temporary.exists():
                temporary.unlink()
    paths = ReportPaths(json=directory / JSON_NAME, markdown=directory / MARKDOWN_NAME, html=directory / HTML_NAME)
    logger.info("report written to %s (%d figures)", directory, len(rendered))
    return paths
