"""Each script in pipelines/ runs end to end on a tiny demo store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def load_pipeline(name: str):
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_demo_pipeline(tmp_path, capsys):
    result = load_pipeline("load_demo").main(["--out", str(tmp_path), "--size", "tiny"])
    splits = result["splits"]
    assert not set(splits.train) & set(splits.test) and not set(splits.val) & set(splits.test)
    assert result["batch_shape"] == (32, 64, 200)
    # tiny cohort: 2 subjects x 10 test images, each averaged over its 2 presentations
    assert result["n_test_items"] == 2 * 10
    assert result["largest_training_value"] <= 20.0  # the clamp after robust scaling
    assert (tmp_path / "transform").is_dir()
    assert "stimuli: " in capsys.readouterr().out


@pytest.mark.parametrize("modality", ["fmri", pytest.param("eeg", marks=pytest.mark.slow)])
def test_image_pipelines_reconstruct_and_reload(modality, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PIPELINES))
    result = load_pipeline(f"{modality}_image").main(["--out", str(tmp_path), "--size", "tiny", "--fast"])
    reconstructions = result["reconstructions"]
    # tiny cohort: 2 subjects x 10 test images, decoded at the fast decoder's 32 px
    assert reconstructions.images.shape == (20, 32, 32, 3)
    entry = result["results"]["reconstruction"][f"{modality} / {'mindeye' if modality == 'fmri' else 'nice'}"]
    assert entry["n_images"] == 20 and 0.0 <= entry["metrics"]["2-way (efficientnet-lite0)"]["value"] <= 1.0
    assert result["pipeline_images"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(result["reloaded_images"], result["pipeline_images"])
    assert "SSIM (MindEye)" in capsys.readouterr().out
