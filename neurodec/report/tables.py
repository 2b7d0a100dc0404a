"""The report's content as a list of blocks (headings, text, tables), rendered to Markdown and HTML.

Numbers are formatted one way everywhere (docs/reports.md, "Number formats"):
accuracies and chance as percentages with two decimals (``0.3125 -> "31.25"``), intervals as
``"[27.10, 35.40]"`` (percent), p-values with three significant digits (``"0.000999"``),
ridge penalties with three significant digits (``"1e+03"``), anything absent as ``"n/a"``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from neurodec.metrics import BRAIN_TO_STIMULUS, DIRECTIONS

MISSING = "n/a"


def format_percent(value) -> str:
    """``0.3125 -> "31.25"``: accuracies and chance levels, in percent."""
    return MISSING if value is None else f"{100 * value:.2f}"


def format_interval(interval) -> str:
    """``[0.271, 0.354] -> "[27.10, 35.40]"``: a confidence interval, in percent."""
    if not interval:
        return MISSING
    return f"[{format_percent(interval[0])}, {format_percent(interval[1])}]"


def format_p_value(value) -> str:
    """``0.000999 -> "0.000999"``: three significant digits."""
    return MISSING if value is None else f"{value:.3g}"


def format_alpha(alpha) -> str:
    """A ridge penalty, or one per subject: ``{"01": 100.0, "02": 1000.0} -> "01: 100, 02: 1e+03"``."""
    if alpha is None:
        return MISSING
    if isinstance(alpha, dict):
        return ", ".join(f"{subject}: {value:.3g}" for subject, value in alpha.items())
    return f"{alpha:.3g}"


def format_mean_sd(mean, sd) -> str:
    """``(0.3125, 0.021) -> "31.25 ± 2.10"``."""
    return MISSING if mean is None else f"{format_percent(mean)} ± {format_percent(sd or 0.0)}"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Block:
    """One piece of the report: ``kind`` is heading, text, table, code or figure."""

    kind: str
    text: str = ""
    level: int = 2
    table: Table | None = None
    figure: object = field(default=None, repr=False)


def entries(results: dict) -> list[tuple[str, str, dict]]:
    """``[(name, "model" | "baseline", entry), ...]``: models first, then baselines."""
    listed = [(name, "model", entry) for name, entry in results["retrieval"].items()]
    listed += [(name, "baseline", entry) for name, entry in results["baselines"].items()]
    return listed


def metric_names(entry_list: list[tuple[str, str, dict]]) -> list[str]:
    """Every metric of the entries, in order of first appearance (evaluate_retrieval's order)."""
    names: list[str] = []
    for _, _, entry in entry_list:
        for metric in entry["metrics"][BRAIN_TO_STIMULUS]["pooled"]:
            if metric not in names:
                names.append(metric)
    return names


def modalities(results: dict) -> list[str]:
    found: list[str] = []
    for _, _, entry in entries(results):
        if entry["modality"] not in found:
            found.append(entry["modality"])
    return found


def _chance(entry_list, metric: str):
    for _, _, entry in entry_list:
        if metric in entry["metrics"]["chance"]["pooled"]:
            return entry["metrics"]["chance"]["pooled"][metric]
    return None


def _kind(role: str, entry: dict) -> str:
    return entry["model"] if role == "model" else entry["kind"]


def comparison_table(results: dict, modality: str, direction: str) -> Table:
    """Models, baselines and chance side by side: pooled accuracy of every metric."""
    listed = [item for item in entries(results) if item[2]["modality"] == modality]
    metrics = metric_names(listed)
    rows = []
    for name, role, entry in listed:
        pooled = entry["metrics"][direction]["pooled"]
        alpha = entry.get("parameters", {}).get("alpha") if role == "baseline" else None
        rows.append([name, _kind(role, entry), format_alpha(alpha) if alpha is not None else ""]
                    + [format_percent(pooled.get(metric)) for metric in metrics])
    rows.append(["chance", "chance", ""] + [format_percent(_chance(listed, metric)) for metric in metrics])
    return Table(["entry", "model / kind", "alpha"] + metrics, rows)


def detail_table(metrics_dict: dict, metrics: list[str]) -> Table:
    """One row per metric: chance, then each direction's pooled value, CI, p-value, subject mean ± sd."""
    header = ["metric", "chance"]
    for direction in DIRECTIONS:
        header += [direction, f"{direction} 95% CI", f"{direction} p", f"{direction} subject mean ± sd"]
    rows = []
    for metric in metrics:
        row = [metric, format_percent(metrics_dict["chance"]["pooled"].get(metric))]
        for direction in DIRECTIONS:
            section = metrics_dict[direction]
            row += [
                format_percent(section["pooled"].get(metric)),
                format_interval(section["interval"].get(metric)),
                format_p_value(section["p_value"].get(metric)),
                format_mean_sd(section["subject_mean"].get(metric), section["subject_sd"].get(metric)),
            ]
        rows.append(row)
    return Table(header, rows)


def per_subject_table(metrics_dict: dict) -> Table:
    """One row per subject and direction: that subject's accuracy for every metric."""
    metrics = list(metrics_dict[BRAIN_TO_STIMULUS]["pooled"])
    rows = []
    for subject in metrics_dict["subjects"]:
        for direction in DIRECTIONS:
            values = metrics_dict[direction]["per_subject"].get(subject, {})
            rows.append([subject, str(metrics_dict["n_items"][subject]), direction]
                        + [format_percent(values.get(metric)) for metric in metrics])
    return Table(["subject", "items", "direction"] + metrics, rows)


def protocol_text(metrics_dict: dict) -> str:
    """A one-line description of how the numbers were computed."""
    protocols = metrics_dict.get("protocols", {})
    n_way = protocols.get("n-way", {})
    full_set = protocols.get("full-set", {})
    items = ", ".join(f"{subject}: {count}" for subject, count in metrics_dict["n_items"].items())
    parts = [
        f"similarity {metrics_dict.get('similarity', MISSING)}",
        f"items per subject ({items})",
    ]
    if n_way:
        parts.append(f"N-way protocol {n_way.get('protocol')}, {n_way.get('n_repeats')} repeats, seed {n_way.get('seed')}")
    if full_set:
        parts.append(f"full-set negatives capped at {full_set.get('max_negatives')}")
    confidence = metrics_dict.get("confidence")
    if confidence is not None:
        parts.append(
            f"{100 * confidence:g}% bootstrap intervals over queries (for N-way, of each query's exact "
            "expected accuracy, which the repeat-sampled value estimates); p-values from permutations"
        )
    text = "; ".join(parts) + "."
    skipped = metrics_dict.get("skipped") or {}
    if skipped:
        text += " Skipped: " + "; ".join(f"{name} ({reason})" for name, reason in skipped.items()) + "."
    return text


# Speech segment retrieval ----------------------------------------------------------------

def _speech_metric_names(speech: dict) -> list[str]:
    """Every speech metric of the entries, in order of first appearance (segment, then word)."""
    names: list[str] = []
    for entry in speech.values():
        listed = entry["metrics"]["metrics"] if "metrics" in entry else list(entry["over_seeds"]["mean"])
        names += [metric for metric in listed if metric not in names]
    return names


def _speech_kind(entry: dict) -> str:
    return entry.get("model", entry.get("kind", MISSING))


def speech_table(speech: dict) -> Table:
    """One row per evaluated entry (a run or a baseline): each metric with its 95% CI, and chance."""
    evaluated = {name: entry for name, entry in speech.items() if "metrics" in entry}
    metrics = _speech_metric_names(evaluated)
    header = ["entry", "model / kind", "queries", "candidates"]
    for metric in metrics:
        header += [metric, f"{metric} 95% CI", f"{metric} chance"]
    rows = []
    for name, entry in evaluated.items():
        values = entry["metrics"]
        candidates = f"{values['n_candidates']} of {values['n_segments']}"
        row = [name, _speech_kind(entry), str(sum(values["n_queries"].values())), candidates]
        for metric in metrics:
            row += [format_percent(values["pooled"].get(metric)), format_interval(values["interval"].get(metric)),
                    format_percent(values["chance"]["pooled"].get(metric))]
        rows.append(row)
    return Table(header, rows)


def speech_seeds_table(speech: dict) -> Table:
    """One row per encoder trained with several seeds: each metric's mean ± sd over seeds, and chance."""
    summaries = {name: entry for name, entry in speech.items() if "over_seeds" in entry}
    metrics = _speech_metric_names(summaries)
    header = ["entry", "model", "seeds"]
    for metric in metrics:
        header += [f"{metric} mean ± sd", f"{metric} chance"]
    rows = []
    for name, entry in summaries.items():
        summary = entry["over_seeds"]
        row = [name, _speech_kind(entry), str(summary["n_seeds"])]
        for metric in metrics:
            row += [format_mean_sd(summary["mean"].get(metric), summary["sd"].get(metric)),
                    format_percent(summary["chance"].get(metric))]
        rows.append(row)
    return Table(header, rows)


def speech_per_subject_table(metrics_dict: dict) -> Table:
    """One row per subject of one entry: queries, then each metric's value, 95% CI and chance."""
    metrics = metrics_dict["metrics"]
    header = ["subject", "queries"]
    for metric in metrics:
        header += [metric, f"{metric} 95% CI", f"{metric} chance"]
    rows = []
    intervals = metrics_dict.get("per_subject_interval", {})
    for subject in metrics_dict["subjects"]:
        values = metrics_dict["per_subject"].get(subject, {})
        chance = metrics_dict["chance"].get("per_subject", {}).get(subject, {})
        row = [subject, str(metrics_dict["n_queries"].get(subject, MISSING))]
        for metric in metrics:
            row += [format_percent(values.get(metric)), format_interval(intervals.get(subject, {}).get(metric)),
                    format_percent(chance.get(metric))]
        rows.append(row)
    return Table(header, rows)


def speech_protocol_text(metrics_dict: dict) -> str:
    """How one entry's speech numbers were computed, in one paragraph."""
    n, total = metrics_dict["n_candidates"], metrics_dict["n_segments"]
    if metrics_dict.get("capped"):
        candidates = (f"each query ranked against {n} candidates: a pool of {n} of the {total} test segments drawn "
                      f"with seed {metrics_dict.get('seed')} (a query whose segment is not in it meets the pool "
                      f"without its last segment, plus its own)")
    else:
        candidates = (f"each query ranked against all {total} test segments (at most {metrics_dict['max_negatives']} "
                      f"per query)")
    confidence = metrics_dict.get("confidence")
    bootstrap = (f"; {100 * confidence:g}% bootstrap intervals over queries ({metrics_dict.get('n_bootstrap')} "
                 f"resamples, within subjects when pooled)") if confidence is not None else ""
    return (f"Speech segment retrieval (Défossez et al. 2023): {candidates}; "
            f"score: {metrics_dict.get('score', MISSING)}; ties {metrics_dict.get('ties', MISSING)}; a word top-k "
            f"hit is a candidate among the k best that starts with the true segment's word; pooled over all "
            f"queries{bootstrap}.")


def format_speech_summary(results: dict) -> str:
    """A short plain-text table of speech segment retrieval: each entry's metrics and chance, in percent.

    Runs show their pooled value, encoders of several seeds ``mean ± sd`` over the seeds; an
    empty string when the results have no speech section.

    >>> print(format_speech_summary(results))   # doctest: +SKIP
    speech                      seed(s)  segment top-1  segment top-10  word top-10   chance segment top-1  ...
    meg / brainmagick           3 seeds  40.10 ± 1.20   70.70 ± 0.90    75.20 ± 0.80  0.01                  ...
    meg / brainmagick (seed-0)  seed-0   41.20          71.00           75.90         0.01                  ...
    """
    speech = results.get("speech") or {}
    if not speech:
        return ""
    metrics = _speech_metric_names(speech)
    header = ["speech", "seed(s)"] + metrics + [f"chance {metric}" for metric in metrics]
    rows = []
    for name, entry in speech.items():
        if "over_seeds" in entry:
            summary = entry["over_seeds"]
            values = [format_mean_sd(summary["mean"].get(m), summary["sd"].get(m)) for m in metrics]
            chance = summary["chance"]
            seeds = f"{summary['n_seeds']} seeds"
        else:
            values = [format_percent(entry["metrics"]["pooled"].get(m)) for m in metrics]
            chance = entry["metrics"]["chance"]["pooled"]
            seeds = entry.get("seed", "")
        rows.append([name, seeds] + values + [format_percent(chance.get(m)) for m in metrics])
    return plain_table(header, rows)


def provenance_table(results: dict, generated: dict) -> Table:
    meta = results["meta"]
    target_space = meta["target_space"]
    pretrained = "yes (pretrained weights)" if target_space["pretrained"] else "no (untrained: random weights)"
    rows = [
        ["store", meta["store"]],
        ["target space", target_space["name"]],
        ["target space pretrained", pretrained],
    ]
    rows += [[f"target space {key}", str(value)] for key, value in target_space.items() if key not in ("name", "pretrained")]
    rows += [[key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
             for key, value in meta.items() if key not in ("store", "config", "target_space")]
    rows += [[key, str(value)] for key, value in generated.items()]
    return Table(["field", "value"], rows)


def baselines_table(results: dict) -> Table:
    rows = []
    for name, entry in results["baselines"].items():
        parameters = entry.get("parameters", {})
        others = {key: value for key, value in parameters.items() if key not in ("alpha", "scoring")}
        rows.append([name, entry["modality"], entry["kind"], format_alpha(parameters.get("alpha")),
                     str(parameters.get("scoring", MISSING)), json.dumps(others) if others else ""])
    return Table(["entry", "modality", "kind", "alpha (chosen on validation)", "validation score", "other parameters"], rows)


def training_table(history: list[dict]) -> Table:
    """The last logged value of every numeric quantity, with its step."""
    last: dict[str, tuple[int, float]] = {}
    for record in history:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                last[key] = (record["step"], value)
    return Table(["quantity", "last step", "last value"], [[key, str(step), f"{value:.4g}"] for key, (step, value) in last.items()])


def markdown_table_blocks(text: str) -> list[Block]:
    """A markdown table (as :func:`neurodec.metrics.format_image_metrics_table` writes) as report blocks.

    The ``| a | b |`` lines become a :class:`Table`, the lines after it a text block each.

    >>> [block.kind for block in markdown_table_blocks("| a | b |\\n|---|---|\\n| 1 | 2 |\\n\\nnote")]
    ['table', 'text']
    """
    lines = text.strip().splitlines()
    table_lines = [line for line in lines if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in table_lines
            if not set(line.replace("|", "").strip()) <= {"-", ":"}]
    blocks = [Block("table", table=Table(rows[0], rows[1:]))] if rows else []
    blocks += [Block("text", line) for line in lines if line.strip() and not line.startswith("|")]
    return blocks


def summary_rows(results: dict, n_way: int = 200) -> tuple[list[str], list[list[str]]]:
    """Header and rows of :func:`format_summary_table`."""
    top1, top5 = f"{n_way}-way top-1", f"{n_way}-way top-5"
    header = ["modality", "model", top1, "95% CI", top5, "chance top-1", "chance top-5",
              "ridge top-1", "ridge 95% CI", "ridge top-5"]
    ridge = {}
    for entry in results["baselines"].values():
        if entry["kind"] == "ridge":
            ridge.setdefault(entry["modality"], entry)
    rows = []
    for name, entry in results["retrieval"].items():
        metrics = entry["metrics"][BRAIN_TO_STIMULUS]
        baseline = ridge.get(entry["modality"])
        baseline_metrics = baseline["metrics"][BRAIN_TO_STIMULUS] if baseline else {"subject_mean": {}, "interval": {}}
        chance = entry["metrics"]["chance"]["pooled"]
        rows.append([entry["modality"], name, format_percent(metrics["subject_mean"].get(top1)),
                     format_interval(metrics["interval"].get(top1)), format_percent(metrics["subject_mean"].get(top5)),
                     format_percent(chance.get(top1)), format_percent(chance.get(top5)),
                     format_percent(baseline_metrics["subject_mean"].get(top1)),
                     format_interval(baseline_metrics["interval"].get(top1)),
                     format_percent(baseline_metrics["subject_mean"].get(top5))])
    return header, rows


def format_summary_table(results: dict, *, n_way: int = 200) -> str:
    """A short plain-text table: per model, N-way top-1/top-5 brain->stimulus, mean over subjects.

    Columns: modality, model (the entry name), ``{n_way}-way top-1`` with its bootstrap 95%
    interval and ``top-5`` (percent, mean over subjects as NICE and ATM report), chance, and
    the ridge baseline of the same modality (the first baseline of kind ``"ridge"``), top-1
    with its interval. ``n/a`` where a metric was not computed (e.g. fewer than ``n_way``
    test items). Columns are separated by two spaces or more.

    >>> print(format_summary_table(results))   # doctest: +SKIP
    modality  model       200-way top-1  95% CI          200-way top-5  chance top-1  ...  ridge top-1  ridge 95% CI  ...
    eeg       eeg / nice  15.60          [13.20, 18.10]  42.80          0.50          ...  3.10         [2.10, 4.20]  ...
    """
    from neurodec.report.schema import validate_results

    results = validate_results(results)
    header, rows = summary_rows(results, n_way)
    return plain_table(header, rows)


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces or more (readable, and split by ``\\s{2,}``)."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def format_image_summary(entries: dict, *, two_way: str = "2-way (efficientnet-lite0)") -> str:
    """A short plain-text table of reconstruction metrics against the shuffled-pairing baseline.

    One row per entry (as ``results["reconstruction"]``): PixCorr, both SSIM recipes and
    ``two_way`` identification (percent), each with its bootstrap 95% interval, then the same
    metric for the shuffled pairing. ``n/a`` where a metric is unavailable.

    >>> print(format_image_summary(results["reconstruction"]))   # doctest: +SKIP
    reconstruction  metric     value  95% CI          shuffled
    eeg / nice      PixCorr    0.212  [0.198, 0.226]  0.101
    """
    from neurodec.metrics.image import SSIM_MINDEYE, SSIM_MINDVIDEO

    metrics = [("PixCorr", "PixCorr", False), (SSIM_MINDEYE, "SSIM (MindEye)", False),
               (SSIM_MINDVIDEO, "SSIM (MinD-Video)", False), (two_way, two_way, True)]

    def number(value, percent: bool) -> str:
        if value is None:
            return MISSING
        return format_percent(value) if percent else f"{value:.3f}"

    header = ["reconstruction", "metric", "value", "95% CI", "shuffled"]
    rows = []
    for name, entry in entries.items():
        shuffled = (entry.get("shuffled") or {}).get("metrics", {})
        for key, label, percent in metrics:
            metric = entry["metrics"].get(key, {})
            interval = metric.get("ci95")
            shown = MISSING if not interval else f"[{number(interval[0], percent)}, {number(interval[1], percent)}]"
            rows.append([name, label + (" (%)" if percent else ""), number(metric.get("value"), percent), shown,
                         number(shuffled.get(key, {}).get("value"), percent)])
    return plain_table(header, rows)


# Rendering ---------------------------------------------------------------------------------

def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines += ["#" * block.level + " " + block.text, ""]
        elif block.kind == "text":
            lines += [block.text, ""]
        elif block.kind == "code":
            lines += ["```", block.text, "```", ""]
        elif block.kind == "table":
            table = block.table
            lines.append("| " + " | ".join(map(_markdown_cell, table.header)) + " |")
            lines.append("|" + "|".join("---" for _ in table.header) + "|")
            lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in table.rows]
            lines.append("")
        elif block.kind == "figure":
            lines += [f"Figure `{block.figure.name}`: {block.figure.caption} (embedded in report.html).", ""]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0 2em; }
figcaption { font-size: 0.9em; color: #555; }
"""


def render_html(blocks: list[Block], title: str) -> str:
    escape = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>"]
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif block.kind == "text":
            parts.append(f"<p>{escape(block.text)}</p>")
        elif block.kind == "code":
            parts.append(f"<pre>{escape(block.text)}</pre>")
        elif block.kind == "table":
            table = block.table
            parts.append("<table>")
            parts.append("<tr>" + "".join(f"<th>{escape(cell)}</th>" for cell in table.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows]
            parts.append("</table>")
        elif block.kind == "figure":
            figure = block.figure
            parts.append(
                f'<figure id="{escape(figure.name)}"><img src="data:image/png;base64,{figure.base64()}" '
                f'alt="{escape(figure.caption)}" width="{figure.width}" height="{figure.height}">'
                f"<figcaption>{escape(figure.caption)}</figcaption></figure>"
            )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
