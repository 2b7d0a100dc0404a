"""Reconstruction of a run's test images: neurodec reconstruct, the report's image section and
BrainToImagePipeline, on a tiny simulated fMRI cohort with a tiny real diffusers decoder.

Independent checks: the reconstruct command's images equal the pipeline's images computed from
the raw store trials (another path through the same components), resuming regenerates exactly
the missing images, and the report's metrics equal the metric functions called directly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import neurodec
from neurodec.cli import main
from neurodec.config import load_config
from neurodec.errors import ConfigError
from neurodec.store import open_store

DECODER = {"sample_size": 8, "image_size": 16, "block_out_channels": [8, 16], "attention_levels": [False, True],
           "norm_num_groups": 4, "attention_head_dim": 4, "cross_attention_dim": 16, "n_tokens": 2,
           "training_steps": 10, "batch_size": 8, "num_inference_steps": 3}


def _pixel_targets(study, ids, dim=24):
    """Deterministic target embeddings: a fixed random projection of 16 px versions of the images."""
    from PIL import Image

    images = study.stimulus_content(ids)
    small = np.stack([np.asarray(Image.fromarray(image).resize((16, 16))) for image in images]).reshape(len(ids), -1)
    projection = np.random.default_rng(0).standard_normal((small.shape[1], dim))
    return ((small / 255.0 - (small / 255.0).mean(0)) @ projection).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct")
    store_path = root / "tiny.zarr"
    study, _ = neurodec.simulate_cohort(store_path, size="tiny", modalities=("fmri",))
    ids = study.stimuli.to_pandas()["id"].astype(str).tolist()
    open_store(store_path, mode="r+").add_targets("pixels", ids, _pixel_targets(study, ids),
                                                  {"extractor": "random projection of 16 px images (tests)"})
    config = load_config({
        "data": {"store": str(store_path), "target": "pixels", "split": {"val_fraction": 0.2, "seed": 0},
                 "transforms": [{"name": "robust_scaler", "per_subject": True}]},
        "model": {"name": "mindeye", "hidden_dim": 16, "n_blocks": 1, "dropout": 0.0, "n_tokens": None,
                  "low_level": False, "projector": False},
        "train": {"max_steps": 10, "epochs": None, "batch_size": 8, "log_every": 5, "checkpoint_every_steps": 50,
                  "selection_metric": "val/loss",
                  "validation": {"n_ways": [], "top_ks": [1], "full_set_top_ks": [1], "n_repeats": 2}},
        "reconstruction": {"strength": 0.8, "seed": 100},
        "output": {"runs_dir": str(root / "runs"), "name": "fmri"},
    })
    run = neurodec.train(config)
    decoder_dir = root / "decoder"
    neurodec.train_decoder(store_path, "pixels", decoder_dir, config=DECODER, progress=False)
    result = neurodec.reconstruct(run.run_dir, decoder=str(decoder_dir), progress=False)
    return {"root": root, "store": store_path, "run_dir": run.run_dir, "decoder": decoder_dir, "result": result}


def test_reconstructions_are_the_test_items_with_their_stimuli(setup):
    result, study = setup["result"], open_store(setup["store"])
    test_ids = set(study.stimuli.to_pandas().query("split == 'test'")["id"])
    assert result.images.shape == (len(result.stimulus_ids), 16, 16, 3) and result.images.dtype == np.uint8
    assert set(result.stimulus_ids) == test_ids and sorted(set(result.subjects)) == ["01", "02"]
    np.testing.assert_array_equal(result.truths, study.stimulus_content(result.stimulus_ids))
    assert result.seeds == [100 + i for i in range(len(result.stimulus_ids))]
    index = json.loads((result.folder / "index.json").read_text())
    assert index["stimulus_ids"] == result.stimulus_ids and index["settings"]["strength"] == 0.8
    assert len(list((result.folder / "images").glob("*.png"))) == len(result.images)
    np.testing.assert_array_equal(np.load(result.folder / "reconstructions.npy"), result.images)
    from PIL import Image

    # 16 columns of (truth above reconstruction) pairs, 2 px gaps, rows as needed.
    rows = -(-len(result.images) // 16)
    assert Image.open(result.folder / "grid.png").size == (16 * 18 + 2, rows * 34 + 2)


def test_pipeline_from_raw_trials_gives_the_same_images(setup):
    result = setup["result"]
    pipe = neurodec.BrainToImagePipeline.from_run(setup["run_dir"], setup["decoder"],
                                                  low_level=result.folder / "low_level", strength=0.8)
    assert set(pipe.components) == {"encoder", "prior", "low_level", "decoder"} and pipe.prior is None
    recording = open_store(setup["store"]).recording(subject="01", session="fmri")
    events = recording.events.to_pandas()
    rows = [i for i, subject in enumerate(result.subjects) if subject == "01"][:4]
    # The run averages the test repetitions: do the same with the raw trials.
    trials = np.stack([np.asarray(recording.data[np.flatnonzero(events["stimulus_id"] == result.stimulus_ids[i])])
                       .mean(axis=0) for i in rows])
    out = pipe(trials, subject="01", seeds=[result.seeds[i] for i in rows], progress=False)
    np.testing.assert_allclose(out.images.astype(int), result.images[rows].astype(int), atol=1)
    assert out.embeddings.shape == (4, 24) and out.low_level_images.shape == (4, 16, 16, 3)
    again = pipe(trials, subject="01", seeds=[result.seeds[i] for i in rows], progress=False)
    np.testing.assert_array_equal(again.images, out.images)
    other = pipe(trials, subject="01", seeds=[7, 8, 9, 10], progress=False)
    assert not np.array_equal(other.images, out.images)

    saved = pipe.save_pretrained(setup["root"] / "pipeline")
    loaded = neurodec.BrainToImagePipeline.from_pretrained(saved)
    assert {name: type(c).__name__ if c is not None else None for name, c in loaded.components.items()} == \
        json.loads((saved / "pipeline.json").read_text())["components"] | {"encoder": "TrainedEncoder"}
    np.testing.assert_array_equal(loaded(trials, subject="01", seeds=[result.seeds[i] for i in rows],
                                         progress=False).images, out.images)


def test_reconstruct_resumes_and_regenerates_on_new_settings(setup):
    first = setup["result"]
    again = neurodec.reconstruct(setup["run_dir"], decoder=str(setup["decoder"]), progress=False)
    assert again.n_generated == 0
    np.testing.assert_array_equal(again.images, first.images)
    for path in sorted((first.folder / "images").glob("*.png"))[:3]:
        path.unlink()
    resumed = neurodec.reconstruct(setup["run_dir"], decoder=str(setup["decoder"]), progress=False)
    assert resumed.n_generated == 3
    np.testing.assert_array_equal(resumed.images, first.images)
    out = setup["root"] / "other"
    changed = neurodec.reconstruct(setup["run_dir"], decoder=str(setup["decoder"]), strength=0.3, max_items=5,
                                   out_dir=out, progress=False)
    assert changed.n_generated == 5 and len(changed.images) == 5
    assert not np.array_equal(changed.images, first.images[:5])
    per_subject = neurodec.reconstruct(setup["run_dir"], decoder=str(setup["decoder"]), items_per_subject=3,
                                       out_dir=setup["root"] / "three", progress=False)
    expected = [i for s in ("01", "02") for i in [j for j, t in enumerate(first.subjects) if t == s][:3]]
    assert per_subject.stimulus_ids == [first.stimulus_ids[i] for i in expected]
    assert per_subject.subjects == ["01"] * 3 + ["02"] * 3


def test_evaluate_adds_the_image_section_with_both_ssim_recipes(setup):
    from neurodec.metrics import pixcorr, ssim_mindeye, ssim_mindvideo

    neurodec.reconstruct(setup["run_dir"], decoder=str(setup["decoder"]), progress=False)
    results = neurodec.evaluate(setup["run_dir"], n_permutations=0, n_bootstrap=20, n_ways=(2,))
    entry = results["reconstruction"]["fmri / mindeye"]
    images, truths = setup["result"].images, setup["result"].truths
    metrics = entry["metrics"]
    assert metrics["PixCorr"]["value"] == pytest.approx(pixcorr(images, truths).mean(), abs=1e-9)
    assert metrics["SSIM (MindEye: gray, 425 px, sigma 1.5)"]["value"] == pytest.approx(
        ssim_mindeye(images, truths).mean(), abs=1e-9)
    assert metrics["SSIM (MinD-Video: RGB, 256 px, data_range 255)"]["value"] == pytest.approx(
        ssim_mindvideo(images, truths).mean(), abs=1e-9)
    assert "unavailable" in metrics["AlexNet(2)"] and "alexnet" in metrics["AlexNet(2)"]["unavailable"]
    assert 0.0 <= metrics["2-way (efficientnet-lite0)"]["value"] <= 1.0
    report = setup["run_dir"] / "report"
    markdown = (report / "report.md").read_text()
    for text in ("Image reconstruction", "PixCorr", "SSIM (MindEye: gray, 425 px, sigma 1.5)",
                 "SSIM (MinD-Video: RGB, 256 px, data_range 255)", "shuffled pairing", "unavailable"):
        assert text in markdown
    assert 'id="reconstruction_grid_0"' in (report / "report.html").read_text()

    from neurodec.report import format_image_summary

    lines = [re.split(r"\s{2,}", line) for line in format_image_summary(results["reconstruction"]).splitlines()]
    assert lines[0] == ["reconstruction", "metric", "value", "95% CI", "shuffled"]
    rows = {row[1]: row for row in lines[1:]}
    assert float(rows["PixCorr"][2]) == pytest.approx(metrics["PixCorr"]["value"], abs=5e-4)
    assert float(rows["PixCorr"][4]) == pytest.approx(entry["shuffled"]["metrics"]["PixCorr"]["value"], abs=5e-4)
    low, high = metrics["2-way (efficientnet-lite0)"]["ci95"]
    assert rows["2-way (efficientnet-lite0) (%)"][3] == f"[{100 * low:.2f}, {100 * high:.2f}]"


def test_reconstruct_errors_before_any_generation(setup, tmp_path, capsys):
    with pytest.raises(ConfigError, match="reconstruction.decoder: no image decoder given"):
        neurodec.reconstruct(setup["run_dir"], progress=False)
    wrong = tmp_path / "wrong"
    from neurodec.generate import train_image_decoder

    train_image_decoder(np.zeros((4, 16, 16, 3), np.uint8), np.ones((4, 5), np.float32),
                        config={**DECODER, "training_steps": 1}, progress=False).save_pretrained(wrong)
    assert main(["reconstruct", str(setup["run_dir"]), "--decoder", str(wrong), "--out", str(tmp_path / "o")]) == 1
    message = capsys.readouterr().err
    assert "shape (5,)" in message and "(24,)" in message
    assert not (tmp_path / "o" / "reconstructions.npy").exists()
