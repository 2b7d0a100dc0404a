"""A readable summary of a study store (what ``neurodec info`` prints)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from neurodec.store.study import Study


def summarize(study: Study) -> dict[str, Any]:
    """Everything ``neurodec info`` shows, as JSON-ready values.

    Trials are counted per split through the stimuli table: a trial belongs to the split
    of the stimulus its event names.
    """
    stimuli = study.stimuli
    split_of = dict(zip(stimuli["id"].tolist(), stimuli["split"].tolist()))
    recordings = []
    for recording in study.recordings():
        events = recording.events
        splits = Counter(split_of.get(s, "") or "unassigned" for s in events["stimulus_id"].tolist())
        entry: dict[str, Any] = {
            "key": recording.key,
            "subject": recording.subject,
            "session": recording.session,
            "run": recording.run,
            "modality": recording.modality,
            "layout": recording.layout,
            "shape": list(recording.shape),
            "events": events.n_rows,
            "events_per_split": dict(sorted(splits.items())),
        }
        if recording.layout == "fmri":
            entry["voxels"] = recording.shape[1]
        else:
            entry["sfreq"] = recording.sfreq
            entry["channels"] = len(recording.ch_names)
            entry["channel_types"] = dict(sorted(Counter(recording.ch_types).items()))
            if recording.layout == "continuous":
                entry["duration_s"] = round(recording.shape[1] / recording.sfreq, 3)
            else:
                entry["tmin"] = recording.tmin
                entry["tmax"] = round(recording.tmin + (recording.shape[2] - 1) / recording.sfreq, 6)
        entry["source"] = recording.source.get("file", "")
        recordings.append(entry)
    subjects: dict[str, dict[str, Any]] = {}
    for entry in recordings:
        subject = subjects.setdefault(entry["subject"], {"sessions": set(), "runs": 0})
        subject["sessions"].add(entry["session"])
        subject["runs"] += 1
    return {
        "url": study.url,
        "name": study.name,
        "format_version": study.format_version,
        "size_bytes": study.size_bytes(),
        "subjects": {
            name: {"sessions": sorted(values["sessions"]), "runs": values["runs"]} for name, values in subjects.items()
        },
        "recordings": recordings,
        "stimuli": {
            "total": stimuli.n_rows,
            "by_kind": dict(sorted(Counter(stimuli["kind"].tolist()).items())),
            "by_split": dict(sorted(Counter(s or "unassigned" for s in stimuli["split"].tolist()).items())),
            "categories": len(set(stimuli["category"].tolist()) - {""}),
            "content_arrays": study.content_arrays,
        },
        "targets": [
            {"key": key, "shape": list(study.target_shape(key))} for key in study.target_keys
        ],
        "provenance": study.provenance,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned plain text for a terminal."""
    lines = [
        f"store     {summary['url']}",
        f"name      {summary['name'] or '-'}",
        f"format    neurodec-study {summary['format_version']}",
        f"size      {_human_bytes(summary['size_bytes'])}",
        f"subjects  {len(summary['subjects'])}: "
        + ", ".join(
            f"{name} ({len(v['sessions'])} session{'s' * (len(v['sessions']) != 1)}, {v['runs']} run{'s' * (v['runs'] != 1)})"
            for name, v in summary["subjects"].items()
        ),
    ]
    stimuli = summary["stimuli"]
    lines.append(
        f"stimuli   {stimuli['total']} ("
        + ", ".join(f"{count} {kind}" for kind, count in stimuli["by_kind"].items())
        + "; "
        + ", ".join(f"{split} {count}" for split, count in stimuli["by_split"].items())
        + f"; {stimuli['categories']} categories)"
    )
    lines.append("")
    header = ("recording", "modality", "layout", "shape", "sfreq", "channels / voxels", "trials per split")
    rows = [header]
    for r in summary["recordings"]:
        if r["layout"] == "fmri":
            sensors = f"{r['voxels']} voxels"
            sfreq = "-"
        else:
            sensors = f"{r['channels']} (" + ", ".join(f"{n} {t}" for t, n in r["channel_types"].items()) + ")"
            sfreq = f"{r['sfreq']:g} Hz"
        splits = ", ".join(f"{k} {v}" for k, v in r["events_per_split"].items()) or "no events"
        rows.append((r["key"], r["modality"], r["layout"], "x".join(map(str, r["shape"])), sfreq, sensors, splits))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    lines.append("")
    if summary["targets"]:
        lines.append("targets   " + ", ".join(f"{t['key']} {'x'.join(map(str, t['shape']))}" for t in summary["targets"]))
    else:
        lines.append("targets   none")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"
