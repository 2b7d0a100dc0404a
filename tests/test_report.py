"""The report writer: JSON round trip, the numbers in the Markdown and HTML tables, figures, validation, atomicity."""

from __future__ import annotations

import base64
import copy
import doctest
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import neurodec.report.figures as figures_module
import neurodec.report.schema as schema_module
import neurodec.report.writer as writer_module
from neurodec.errors import ReportInputError
from neurodec.evaluation import ridge_baseline_per_subject
from neurodec.metrics import evaluate_retrieval, similarity_matrix
from neurodec.report import format_summary_table, similarity_excerpt, write_report

SUBJECTS = ("01", "02", "03")
N_TEST, N_TRAIN, N_VAL, DIM, N_FEATURES = 220, 300, 60, 16, 64
EVALUATION = {"n_ways": (2, 10, 200), "n_repeats": 5, "n_bootstrap": 100, "n_permutations": 30}


@pytest.fixture(scope="module")
def results() -> dict:
    """A model (noisy copies of the targets) and a ridge baseline on 3 subjects x 220 test items, dim 16."""
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((N_TRAIN + N_VAL + N_TEST, DIM))
    test_targets = targets[-N_TEST:]
    subjects = np.repeat(SUBJECTS, N_TEST)
    model_brain = np.concatenate([test_targets + noise * rng.standard_normal((N_TEST, DIM))
                                  for noise in (1.2, 1.5, 1.8)])
    model_metrics = evaluate_retrieval(model_brain, np.tile(test_targets, (3, 1)), subjects=subjects, **EVALUATION)

    # Each subject's "recording" is a different random mixing of the targets plus noise.
    recordings = {subject: targets @ rng.standard_normal((DIM, N_FEATURES)) + 4.0 * rng.standard_normal(
        (len(targets), N_FEATURES)) for subject in SUBJECTS}
    train, val = slice(0, N_TRAIN), slice(N_TRAIN, N_TRAIN + N_VAL)
    ridge = ridge_baseline_per_subject(
        {s: x[train] for s, x in recordings.items()}, {s: targets[train] for s in SUBJECTS},
        {s: x[val] for s, x in recordings.items()}, {s: targets[val] for s in SUBJECTS},
        {s: x[-N_TEST:] for s, x in recordings.items()},
    )
    ridge_brain = np.concatenate([ridge[subject].predictions_test for subject in SUBJECTS])
    ridge_metrics = evaluate_retrieval(ridge_brain, np.tile(test_targets, (3, 1)), subjects=subjects, **EVALUATION)
    return {
        "meta": {
            "store": "memory://report-test.zarr",
            "config": {"model": {"name": "nice"}, "train": {"epochs": 3}},
            "target_space": {"name": "open_clip tiny (built in code)", "pretrained": False, "dim": DIM},
            "split": "test",
        },
        "retrieval": {"eeg / nice": {"modality": "eeg", "model": "nice", "metrics": model_metrics}},
        "baselines": {
            "eeg / ridge": {
                "modality": "eeg",
                "kind": "ridge",
                "parameters": {"alpha": {s: ridge[s].alpha for s in SUBJECTS}, "scoring": "cosine"},
                "metrics": ridge_metrics,
            }
        },
        "training_history": [{"step": step, "loss": 4.0 / (1 + step), "val 200-way top-1": 0.001 * step}
                             for step in range(0, 100, 10)],
        "similarity_excerpt": similarity_excerpt(model_brain, test_targets, size=50),
    }


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    paths = write_report(folder, results, title="EEG to image (test)")
    return paths, results


def percent(value) -> str:
    return f"{100 * value:.2f}"


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """{heading above the table: rows (header first)} parsed from Markdown."""
    tables, heading, current = {}, None, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, current = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if all(re.fullmatch(r"-+", cell) for cell in cells):
                continue
            if current is None:
                current = tables[heading] = []
            current.append(cells)
        else:
            current = None
    return tables


def test_json_round_trips_every_number_exactly(written):
    paths, results = written
    document = json.loads(paths.json.read_text())
    for section in ("meta", "retrieval", "baselines", "training_history", "similarity_excerpt"):
        assert document[section] == results[section], section
    assert document["report"]["title"] == "EEG to image (test)"
    assert document["report"]["figures"] == ["topk_against_n", "per_subject", "similarity_excerpt", "training_curves"]


def test_markdown_comparison_table_holds_models_baselines_and_chance(written):
    paths, results = written
    tables = markdown_tables(paths.markdown.read_text())
    model = results["retrieval"]["eeg / nice"]["metrics"]
    ridge = results["baselines"]["eeg / ridge"]["metrics"]
    alphas = results["baselines"]["eeg / ridge"]["parameters"]["alpha"]
    for direction in ("brain->stimulus", "stimulus->brain"):
        header, *rows = tables[f"eeg, {direction}"]
        by_entry = {row[0]: dict(zip(header, row)) for row in rows}
        assert list(by_entry) == ["eeg / nice", "eeg / ridge", "chance"]
        assert by_entry["eeg / ridge"]["alpha"] == ", ".join(f"{s}: {a:.3g}" for s, a in alphas.items())
        assert len(header) == 3 + len(model[direction]["pooled"])
        for metric in model[direction]["pooled"]:
            assert by_entry["eeg / nice"][metric] == percent(model[direction]["pooled"][metric])
            assert by_entry["eeg / ridge"][metric] == percent(ridge[direction]["pooled"][metric])
            assert by_entry["chance"][metric] == percent(model["chance"]["pooled"][metric])
    assert tables["eeg, brain->stimulus"][-1][tables["eeg, brain->stimulus"][0].index("200-way top-1")] == "0.50"


def test_markdown_detail_tables_hold_intervals_p_values_and_subjects(written):
    paths, results = written
    tables = markdown_tables(paths.markdown.read_text())
    for name, entry in [*results["retrieval"].items(), *results["baselines"].items()]:
        metrics = entry["metrics"]
        rows = tables[f"{name}: N-way retrieval"][1:] + tables[f"{name}: full-set ranking"][1:]
        assert [row[0] for row in rows] == list(metrics["brain->stimulus"]["pooled"])
        assert "200-way top-5" in [row[0] for row in rows] and "full-set top-10" in [row[0] for row in rows]
        for row in rows:
            metric = row[0]
            assert row[1] == percent(metrics["chance"]["pooled"][metric])
            for offset, direction in ((2, "brain->stimulus"), (6, "stimulus->brain")):
                section = metrics[direction]
                low, high = section["interval"][metric]
                assert row[offset] == percent(section["pooled"][metric])
                assert row[offset + 1] == f"[{percent(low)}, {percent(high)}]"
                assert float(row[offset + 2]) == pytest.approx(section["p_value"][metric], rel=1e-2)
                assert row[offset + 2] == f"{section['p_value'][metric]:.3g}"
                per_subject = [section["per_subject"][s][metric] for s in SUBJECTS]
                assert row[offset + 3] == f"{percent(np.mean(per_subject))} ± {percent(np.std(per_subject, ddof=1))}"
        header, *subject_rows = tables[f"{name}: per subject"]
        assert len(subject_rows) == 2 * len(SUBJECTS)
        for row in subject_rows:
            subject, items, direction = row[:3]
            assert items == str(N_TEST)
            for metric, cell in zip(header[3:], row[3:]):
                assert cell == percent(metrics[direction]["per_subject"][subject][metric])
    provenance = dict(tables["Provenance"][1:])
    assert provenance["store"] == "memory://report-test.zarr"
    assert provenance["target space pretrained"].startswith("no")
    assert provenance["split"] == "test"


class _HtmlContent(HTMLParser):
    """Tables (as lists of rows) and image sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_has_the_same_tables_and_one_decodable_png_per_figure(written):
    paths, _ = written
    page = paths.html.read_text()
    parsed = _HtmlContent()
    parsed.feed(page)
    assert parsed.tables == [[row for row in table] for table in markdown_tables(paths.markdown.read_text()).values()]
    figure_names = json.loads(paths.json.read_text())["report"]["figures"]
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(figure_names) == len(parsed.images) == 4
    for attributes in parsed.images:
        data = base64.b64decode(attributes["src"].removeprefix("data:image/png;base64,"), validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "PNG"
        assert image.size == (800, 450) == (int(attributes["width"]), int(attributes["height"]))
        # A blank canvas would be one colour; a plot has many.
        assert len(np.unique(np.asarray(image.convert("L")))) > 20
    assert "src=\"http" not in page and "<script" not in page  # self-contained


def test_similarity_excerpt_is_the_cosine_of_the_first_items(results):
    model_brain_rows = np.asarray(results["similarity_excerpt"]["matrix"])
    assert model_brain_rows.shape == (50, 50)
    rng = np.random.default_rng(1)
    brain, targets = rng.standard_normal((2, 60, 8))
    excerpt = similarity_excerpt(brain, targets, size=5)
    normalised = [matrix / np.linalg.norm(matrix, axis=1, keepdims=True) for matrix in (brain[:5], targets[:5])]
    np.testing.assert_allclose(excerpt["matrix"], normalised[0] @ normalised[1].T, atol=1e-6)
    np.testing.assert_allclose(excerpt["matrix"], np.asarray(similarity_matrix(brain[:5], targets[:5])), atol=1e-6)


def test_summary_table_numbers_are_the_subject_means(results):
    lines = format_summary_table(results).splitlines()
    header = re.split(r"\s{2,}", lines[0])
    assert header == ["modality", "model", "200-way top-1", "95% CI", "200-way top-5", "chance top-1",
                      "chance top-5", "ridge top-1", "ridge 95% CI", "ridge top-5"]
    assert len(lines) == 2
    row = dict(zip(header, re.split(r"\s{2,}", lines[1])))
    model = results["retrieval"]["eeg / nice"]["metrics"]
    ridge = results["baselines"]["eeg / ridge"]["metrics"]
    assert row["modality"] == "eeg" and row["model"] == "eeg / nice"
    for k in (1, 5):
        metric = f"200-way top-{k}"
        assert row[metric] == percent(np.mean([model["brain->stimulus"]["per_subject"][s][metric] for s in SUBJECTS]))
        assert row[f"ridge top-{k}"] == percent(
            np.mean([ridge["brain->stimulus"]["per_subject"][s][metric] for s in SUBJECTS]))
        assert row[f"chance top-{k}"] == percent(k / 200)
    low, high = model["brain->stimulus"]["interval"]["200-way top-1"]
    assert row["95% CI"] == f"[{percent(low)}, {percent(high)}]" and low <= float(row["200-way top-1"]) / 100 <= high
    low, high = ridge["brain->stimulus"]["interval"]["200-way top-1"]
    assert row["ridge 95% CI"] == f"[{percent(low)}, {percent(high)}]"
    # The ridge baseline decodes: far above the 0.5 % chance of 200-way top-1.
    assert float(row["ridge top-1"]) > 5.0
    # Fewer items than N: reported as n/a, not as a number.
    small = format_summary_table(results, n_way=300).splitlines()[1]
    assert re.split(r"\s{2,}", small)[2:] == ["n/a"] * 8


def _broken(results, change):
    broken = copy.deepcopy(results)
    change(broken)
    return broken


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("meta"), r"results: missing section 'meta'"),
        (lambda r: r.update(extra={}), r"results: unknown section\(s\) \['extra'\]"),
        (lambda r: r["meta"].pop("store"), r"results\['meta'\]: missing key 'store'"),
        (lambda r: r["meta"]["target_space"].update(pretrained="yes"),
         r"results\['meta'\]\['target_space'\]\['pretrained'\]: expected true or false, found 'yes'"),
        (lambda r: r["retrieval"]["eeg / nice"].pop("metrics"),
         r"results\['retrieval'\]\['eeg / nice'\]: missing key 'metrics'"),
        (lambda r: r["retrieval"]["eeg / nice"]["metrics"].pop("chance"),
         r"results\['retrieval'\]\['eeg / nice'\]\['metrics'\]: missing key 'chance'"),
        (lambda r: r["baselines"]["eeg / ridge"]["metrics"]["brain->stimulus"]["pooled"].update({"2-way top-1": "x"}),
         r"\['pooled'\]\['2-way top-1'\]: expected a number, found 'x'"),
        (lambda r: r["baselines"]["eeg / ridge"].pop("kind"), r"results\['baselines'\]\['eeg / ridge'\]: missing key 'kind'"),
        (lambda r: r["training_history"].append({"loss": 1.0}), r"results\['training_history'\]\[10\]: missing key 'step'"),
        (lambda r: r.update(similarity_excerpt={"matrix": [1.0, 2.0]}),
         r"results\['similarity_excerpt'\]\['matrix'\]: expected a 2-D list of numbers"),
        (lambda r: r.update(retrieval={}), r"results\['retrieval'\]: expected a non-empty dict"),
    ],
)
def test_invalid_results_raise_a_clear_error(results, tmp_path, change, message):
    with pytest.raises(ReportInputError, match=message):
        write_report(tmp_path, _broken(results, change), title="broken")
    assert list(tmp_path.iterdir()) == []


def test_optional_sections_and_numpy_values_are_accepted(results, tmp_path):
    minimal = {"meta": results["meta"], "retrieval": copy.deepcopy(results["retrieval"])}
    minimal["retrieval"]["eeg / nice"]["metrics"]["brain->stimulus"]["pooled"]["2-way top-1"] = np.float32(0.75)
    paths = write_report(tmp_path, minimal, title="minimal", figures=False)
    document = json.loads(paths.json.read_text())
    assert document["baselines"] == {} and document["training_history"] == [] and document["report"]["figures"] == []
    assert document["retrieval"]["eeg / nice"]["metrics"]["brain->stimulus"]["pooled"]["2-way top-1"] == 0.75
    assert "<img" not in paths.html.read_text()


def test_rewriting_replaces_the_report_and_a_crash_keeps_the_old_one(results, tmp_path, monkeypatch):
    light = {key: value for key, value in results.items() if key not in ("training_history", "similarity_excerpt")}
    write_report(tmp_path, light, title="first", figures=False)
    paths = write_report(tmp_path, light, title="second", figures=False)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]
    assert json.loads(paths.json.read_text())["report"]["title"] == "second"
    assert {path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {0o644}
    assert paths.markdown.read_text().startswith("# second\n")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    # A failure while the temporary files are written (disk full) leaves the previous report whole.
    calls = []

    def failing_fsync(descriptor):
        calls.append(descriptor)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_report(tmp_path, light, title="third", figures=False)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_docstring_examples():
    for module in (schema_module, figures_module, writer_module):
        assert doctest.testmod(module).failed == 0, module.__name__
