"""The ``results`` dict the report writer renders, and its validation (docs/reports.md).

Sections (``meta`` and ``retrieval`` are required, the others may be left out)::

    {"meta": {"store": "demo.zarr", "config": {...},
              "target_space": {"name": "open_clip ViT-H-14", "pretrained": True}, ...},
     "retrieval": {"eeg / nice": {"modality": "eeg", "model": "nice",
                                  "metrics": evaluate_retrieval(...)}},
     "baselines": {"eeg / ridge": {"modality": "eeg", "kind": "ridge",
                                   "parameters": {"alpha": {"01": 100.0}, "scoring": "cosine"},
                                   "metrics": evaluate_retrieval(...)}},
     "training_history": [{"step": 100, "loss": 3.2, "val 200-way top-1": 0.11}, ...],
     "similarity_excerpt": {"matrix": [[...], ...], "rows": "brain", "columns": "images"},
     "speech": {"meg / brainmagick": {"modality": "meg", "model": "brainmagick",
                                      "metrics": segment_retrieval(...)}}}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neurodec.errors import ReportInputError
from neurodec.metrics import DIRECTIONS

SECTIONS = ("meta", "retrieval", "baselines", "training_history", "similarity_excerpt", "reconstruction", "speech")
REQUIRED_SECTIONS = ("meta", "retrieval")
# What evaluate_retrieval returns and the report reads.
METRICS_KEYS = ("subjects", "n_items", "chance", *DIRECTIONS)
DIRECTION_KEYS = ("pooled", "subject_mean", "subject_sd", "per_subject", "interval", "p_value")
# What neurodec.metrics.segment_retrieval returns and the report reads.
SPEECH_METRICS_KEYS = ("metrics", "pooled", "interval", "per_subject", "chance", "subjects", "n_queries",
                       "n_candidates", "n_segments", "max_negatives")
SPEECH_SEED_KEYS = ("n_seeds", "runs", "mean", "sd", "chance")
# The similarity excerpt is a picture, not a data dump.
MAX_EXCERPT_SIZE = 500


def to_json_ready(value: Any) -> Any:
    """A copy of ``value`` with numpy arrays and scalars as lists and Python numbers; NaN/Inf as None.

    >>> to_json_ready({"a": np.float32(0.5), "b": np.arange(2), "c": float("nan")})
    {'a': 0.5, 'b': [0, 1], 'c': None}
    """
    if isinstance(value, dict):
        return {str(key): to_json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _fail(where: str, expected: str, found: Any) -> None:
    shown = type(found).__name__ if isinstance(found, (dict, list)) else repr(found)
    raise ReportInputError(f"results[{where}]: expected {expected}, found {shown}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(mapping: dict, key: str, where: str, expected: str, check) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ReportInputError(f"results[{where}]: missing key {key!r} ({expected})")
    value = mapping[key]
    if not check(value):
        _fail(f"{where}][{key!r}", expected, value)
    return value


def _require_metrics(entry: dict, where: str) -> None:
    """An entry's ``metrics``: present, and shaped as ``evaluate_retrieval`` returns them."""
    if "metrics" not in entry:
        raise ReportInputError(f"results[{where}]: missing key 'metrics' (the output of evaluate_retrieval)")
    validate_metrics(entry["metrics"], f"{where}]['metrics'")


def validate_metrics(metrics: Any, where: str) -> None:
    """Check that ``metrics`` is the dict :func:`neurodec.metrics.evaluate_retrieval` returns."""
    if not isinstance(metrics, dict):
        _fail(where, "the dict returned by neurodec.metrics.evaluate_retrieval", metrics)
    for key in METRICS_KEYS:
        if key not in metrics:
            raise ReportInputError(
                f"results[{where}]: missing key {key!r} (expected the output of neurodec.metrics.evaluate_retrieval)"
            )
    subjects = _require(metrics, "subjects", where, "a list of subject names",
                        lambda value: isinstance(value, list) and bool(value))
    _require(metrics, "n_items", where, "{subject: number of items}",
             lambda value: isinstance(value, dict) and set(value) == set(subjects))
    chance = _require(metrics, "chance", where, "{'pooled': ..., 'per_subject': ...}",
                      lambda value: isinstance(value, dict) and "pooled" in value)
    for direction in DIRECTIONS:
        section = metrics[direction]
        for key in DIRECTION_KEYS:
            _require(section, key, f"{where}][{direction!r}", "a dict keyed by metric name",
                     lambda value: isinstance(value, dict))
        for metric, value in section["pooled"].items():
            if not _is_number(value):
                _fail(f"{where}][{direction!r}]['pooled'][{metric!r}", "a number", value)
            if metric not in chance["pooled"]:
                raise ReportInputError(f"results[{where}]['chance']['pooled']: missing metric {metric!r}")
        for metric, interval in section["interval"].items():
            if not (isinstance(interval, list) and len(interval) == 2 and all(map(_is_number, interval))):
                _fail(f"{where}][{direction!r}]['interval'][{metric!r}", "[low, high]", interval)


def validate_speech_entry(entry: Any, where: str) -> None:
    """One entry of the ``speech`` section: a run's :func:`neurodec.metrics.segment_retrieval`
    output under ``metrics``, or :func:`neurodec.metrics.summarize_over_seeds` under ``over_seeds``."""
    if not isinstance(entry, dict):
        _fail(where, "a dict {'modality', 'model' or 'kind', 'metrics' or 'over_seeds'}", entry)
    _require(entry, "modality", where, "a modality name (a string)", lambda value: isinstance(value, str))
    if not isinstance(entry.get("model", entry.get("kind")), str):
        raise ReportInputError(f"results[{where}]: expected 'model' (an encoder) or 'kind' (a baseline), a string")
    if ("metrics" in entry) == ("over_seeds" in entry):
        raise ReportInputError(f"results[{where}]: expected exactly one of 'metrics' (the output of "
                               f"neurodec.metrics.segment_retrieval) and 'over_seeds' (summarize_over_seeds), "
                               f"found {sorted(key for key in ('metrics', 'over_seeds') if key in entry) or 'neither'}")
    if "over_seeds" in entry:
        summary = entry["over_seeds"]
        for key in SPEECH_SEED_KEYS:
            _require(summary, key, f"{where}]['over_seeds'", "the output of neurodec.metrics.summarize_over_seeds",
                     lambda value: value is not None)
        for part in ("mean", "sd"):
            for metric, value in summary[part].items():
                if not _is_number(value):
                    _fail(f"{where}]['over_seeds'][{part!r}][{metric!r}", "a number", value)
        return
    metrics = entry["metrics"]
    for key in SPEECH_METRICS_KEYS:
        _require(metrics, key, f"{where}]['metrics'", "the output of neurodec.metrics.segment_retrieval",
                 lambda value: value is not None)
    chance = _require(metrics["chance"], "pooled", f"{where}]['metrics']['chance'", "{metric: chance level}",
                      lambda value: isinstance(value, dict))
    for metric in metrics["metrics"]:
        if not _is_number(metrics["pooled"].get(metric)):
            _fail(f"{where}]['metrics']['pooled'][{metric!r}", "a number", metrics["pooled"].get(metric))
        if not _is_number(chance.get(metric)):
            _fail(f"{where}]['metrics']['chance']['pooled'][{metric!r}", "a number", chance.get(metric))
    for metric, interval in metrics["interval"].items():
        if not (isinstance(interval, list) and len(interval) == 2 and all(map(_is_number, interval))):
            _fail(f"{where}]['metrics']['interval'][{metric!r}", "[low, high]", interval)


def validate_results(results: Any) -> dict:
    """Check ``results`` against the schema of docs/reports.md; return its JSON-ready copy.

    Raises :class:`neurodec.errors.ReportInputError` naming the key, what was expected and
    what was found.

    >>> validate_results({"retrieval": {}})
    Traceback (most recent call last):
    ...
    neurodec.errors.ReportInputError: results: missing section 'meta' (required: meta, retrieval)
    """
    if not isinstance(results, dict):
        _fail("", "a dict with sections " + ", ".join(SECTIONS), results)
    unknown = sorted(set(results) - set(SECTIONS))
    if unknown:
        raise ReportInputError(f"results: unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    for section in REQUIRED_SECTIONS:
        if section not in results:
            raise ReportInputError(
                f"results: missing section {section!r} (required: {', '.join(REQUIRED_SECTIONS)})"
            )
    results = to_json_ready(results)
    results.setdefault("baselines", {})
    results.setdefault("training_history", [])
    results.setdefault("similarity_excerpt", None)

    meta = results["meta"]
    if not isinstance(meta, dict):
        _fail("'meta'", "a dict", meta)
    _require(meta, "store", "'meta'", "the store URL or path (a string)", lambda value: isinstance(value, str))
    _require(meta, "config", "'meta'", "the resolved config (a dict)", lambda value: isinstance(value, dict))
    target_space = _require(meta, "target_space", "'meta'", "{'name': ..., 'pretrained': true/false}",
                            lambda value: isinstance(value, dict))
    _require(target_space, "name", "'meta']['target_space'", "a string", lambda value: isinstance(value, str))
    _require(target_space, "pretrained", "'meta']['target_space'", "true or false",
             lambda value: isinstance(value, bool))

    retrieval = results["retrieval"]
    if not isinstance(retrieval, dict) or not retrieval:
        _fail("'retrieval'", "a non-empty dict {entry name: {'modality', 'model', 'metrics'}}", retrieval)
    for name, entry in retrieval.items():
        where = f"'retrieval'][{name!r}"
        _require(entry, "modality", where, "a modality name (a string)", lambda value: isinstance(value, str))
        _require(entry, "model", where, "a model name (a string)", lambda value: isinstance(value, str))
        _require_metrics(entry, where)

    baselines = results["baselines"]
    if not isinstance(baselines, dict):
        _fail("'baselines'", "a dict {entry name: {'modality', 'kind', 'metrics', 'parameters'}}", baselines)
    for name, entry in baselines.items():
        where = f"'baselines'][{name!r}"
        _require(entry, "modality", where, "a modality name (a string)", lambda value: isinstance(value, str))
        _require(entry, "kind", where, "the baseline kind, e.g. 'ridge'", lambda value: isinstance(value, str))
        _require_metrics(entry, where)
        parameters = entry.setdefault("parameters", {})
        if not isinstance(parameters, dict):
            _fail(f"{where}]['parameters'", "a dict", parameters)
        alpha = parameters.get("alpha")
        if alpha is not None and not (
            _is_number(alpha) or (isinstance(alpha, dict) and all(map(_is_number, alpha.values())))
        ):
            _fail(f"{where}]['parameters']['alpha'", "a number or {subject: number}", alpha)

    history = results["training_history"]
    if not isinstance(history, list):
        _fail("'training_history'", "a list of metric dicts (one per logged step)", history)
    for index, record in enumerate(history):
        _require(record, "step", f"'training_history'][{index}", "an integer step",
                 lambda value: isinstance(value, int) and not isinstance(value, bool))

    reconstruction = results.setdefault("reconstruction", {})
    if not isinstance(reconstruction, dict):
        _fail("'reconstruction'", "a dict {entry name: evaluate_reconstructions output + 'modality'}", reconstruction)
    for name, entry in reconstruction.items():
        where = f"'reconstruction'][{name!r}"
        _require(entry, "modality", where, "a modality name (a string)", lambda value: isinstance(value, str))
        _require(entry, "metrics", where, "{metric name: {'value', 'ci95', ...} or {'unavailable': text}}",
                 lambda value: isinstance(value, dict) and bool(value))

    speech = results.setdefault("speech", {})
    if not isinstance(speech, dict):
        _fail("'speech'", "a dict {entry name: {'modality', 'model' or 'kind', 'metrics' or 'over_seeds'}}", speech)
    for name, entry in speech.items():
        validate_speech_entry(entry, f"'speech'][{name!r}")

    excerpt = results["similarity_excerpt"]
    if excerpt is not None:
        matrix = _require(excerpt, "matrix", "'similarity_excerpt'", "a 2-D list of similarities",
                          lambda value: isinstance(value, list))
        try:
            array = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim != 2 or min(array.shape) < 1 or max(array.shape) > MAX_EXCERPT_SIZE:
            _fail("'similarity_excerpt']['matrix'", f"a 2-D list of numbers, at most {MAX_EXCERPT_SIZE} a side",
                  "shape " + str(None if array is None else array.shape))
        excerpt.setdefault("rows", "brain embeddings")
        excerpt.setdefault("columns", "target embeddings")
    return results
