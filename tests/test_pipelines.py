"""Each script in pipelines/ runs end to end on a tiny demo store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
