"""The command line: summaries, one-line errors with non-zero exits, help with examples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neurodec.catalog import dataset_cards
from neurodec.cli import main
from neurodec.errors import StoreNotFoundError
from test_store import make_epoched, make_fmri, write_store


def test_info_prints_the_summary_and_json(tmp_path, capsys):
    write_store(tmp_path / "s.zarr", [make_epoched(n_trials=12), make_fmri(subject="02", n_voxels=5)])
    assert main(["info", str(tmp_path / "s.zarr")]) == 0
    text = capsys.readouterr().out
    assert "format    neurodec-study 1.0" in text
    assert "subjects  2: 01 (1 session, 1 run), 02 (1 session, 1 run)" in text
    assert "stimuli   6 (6 image; test 2, train 4; 2 categories)" in text
    row = next(line for line in text.splitlines() if line.startswith("sub-01/ses-01/run-01"))
    assert row.split()[1:5] == ["eeg", "epoched", "12x3x20", "100"]
    assert row.endswith("test 4, train 8")
    assert "5 voxels" in text

    assert main(["info", str(tmp_path / "s.zarr"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recordings"][0]["channel_types"] == {"eeg": 3}
    assert summary["recordings"][0]["tmax"] == pytest.approx(-0.05 + 19 / 100)
    assert summary["stimuli"]["by_kind"] == {"image": 6}


def test_errors_are_one_line_with_a_non_zero_exit(tmp_path, capsys):
    assert main(["info", str(tmp_path / "absent.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("neurodec: error: no study store at")
    with pytest.raises(StoreNotFoundError):
        main(["--debug", "info", str(tmp_path / "absent.zarr")])
    assert main(["info"]) == 2  # usage error from argparse
    assert main([]) == 2


def test_every_command_has_help_with_an_example(capsys):
    for command in ("info", "ingest", "embed", "train", "evaluate", "adapt", "simulate", "demo", "datasets"):
        assert main([command, "--help"]) == 0
        assert "example:\n  neurodec " + command in capsys.readouterr().out


def test_console_script_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "neurodec", "info", str(tmp_path / "absent.zarr")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("neurodec: error: no study store")
    assert "Traceback" not in result.stderr


def test_dataset_cards_are_complete():
    cards = dataset_cards()
    assert {"things-eeg2", "nsd", "meg-masc", "things-meg", "demo"} <= set(cards)
    assert cards["things-eeg2"]["default_epoching"]["tmax"] == 1.0
    assert cards["demo"]["recipe"] == "neurodec.simulate.simulate_cohort"


def test_import_neurodec_stays_light():
    code = "import sys, neurodec; print(sorted(m for m in ('torch', 'mne', 'nibabel', 'diffusers', 'open_clip', 'sklearn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_ingest_command_matches_mne_and_rejects_a_truncated_edf(real_data, tmp_path, capsys):
    import mne
    import numpy as np

    from neurodec.store import open_store

    source = real_data / "brainvision" / "testbva.vhdr"
    out = tmp_path / "bva.zarr"
    assert main(["ingest", str(source), "--out", str(out), "--subject", "07", "--set", "preprocessing.resample=100"]) == 0
    assert "sub-07/ses-01/run-01" in capsys.readouterr().out
    stored = open_store(out).recording(subject="07")
    expected = mne.io.read_raw(source, preload=True, verbose="error").resample(100, verbose="error").get_data()
    np.testing.assert_allclose(stored.data[...], expected.astype(np.float32), rtol=1e-6, atol=0)
    assert stored.preprocessing[-1]["step"] == "resample"

    truncated = tmp_path / "truncated.edf"
    truncated.write_bytes((real_data / "edf" / "test_reduced.edf").read_bytes()[:100_000])
    assert main(["ingest", str(truncated), "--out", str(tmp_path / "t.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated.edf" in err and "truncated EDF" in err
    assert not (tmp_path / "t.zarr").exists()

    assert main(["ingest", str(source), "--out", str(out), "--set", "preprocessing.no_such_step=1"]) == 1
    assert "no_such_step" in capsys.readouterr().err


def test_shipped_ingestion_configs_are_valid():
    from pathlib import Path

    from neurodec.io import load_options

    folder = Path(__file__).resolve().parents[1] / "configs" / "ingest"
    loaded = {path.stem: load_options(path) for path in sorted(folder.glob("*.yaml"))}
    assert loaded["eeg-epochs"].epochs.tmin == -0.2 and loaded["eeg-epochs"].preprocessing.resample == 250
    assert loaded["fmri-glm"].fmri.method == "glm"
    assert loaded["meg-continuous"].preprocessing.clamp == 20


def test_demo_simulates_once_then_reuses_the_cohort(tmp_path, capsys):
    from neurodec.store import open_store

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "tiny", "--until", "cohort"]) == 0
    first = capsys.readouterr().out
    store = out / "demo.zarr"
    assert f"[demo] store: {store}" in first
    assert "mean eeg" in first  # the simulator's noise-ceiling table
    study = open_store(store)
    assert sorted({r.modality for r in study.recordings()}) == ["eeg", "fmri", "meg"]
    assert f"subjects  {len(study.subjects)}:" in first

    assert main(["demo", "--out", str(out), "--size", "tiny", "--until", "cohort"]) == 0
    second = capsys.readouterr().out
    assert "reusing the demo cohort" in second and "mean eeg" not in second


def test_api_functions_survive_importing_the_subpackages():
    import neurodec
    import neurodec.io
    import neurodec.simulate  # noqa: F401  (importing a sub-package must not shadow an API function)
    import neurodec.training  # noqa: F401

    import neurodec.evaluation  # noqa: F401

    for name in ("simulate_cohort", "ingest", "info", "embed", "train", "evaluate", "load_encoder", "retrieve", "adapt"):
        assert callable(getattr(neurodec, name)), name


def test_embed_command_caches_targets_by_config(tmp_path, capsys):
    import numpy as np

    from neurodec.store import open_store

    write_store(tmp_path / "s.zarr")
    ids = [f"img-{i:02d}" for i in range(6)]
    embeddings = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "emb.npz", ids=np.array(ids), embeddings=embeddings)
    arguments = ["embed", str(tmp_path / "s.zarr"), "--extractor", "precomputed", "--set", f"path={tmp_path / 'emb.npz'}"]
    assert main(arguments + ["--key", "toy"]) == 0
    assert "targets toy (6x4)" in capsys.readouterr().out
    stored_ids, stored = open_store(tmp_path / "s.zarr").targets("toy")
    assert stored_ids.tolist() == ids
    np.testing.assert_array_equal(stored, embeddings)

    assert main(["embed", str(tmp_path / "s.zarr"), "--extractor", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_convert_runs_a_recipe_and_refuses_missing_sounds(tmp_path, capsys):
    import shutil

    from neurodec.store import open_store
    from test_recipes_eeg import broderick_replica

    root = tmp_path / "Natural Speech"
    broderick_replica(root, subjects=(1,), runs=(1, 2))
    out = tmp_path / "broderick.zarr"
    # Options by dotted key: nested (preprocessing.*) and plain (segment settings).
    assert main(["convert", "broderick2019", str(tmp_path), str(out), "--set", "preprocessing.bandpass=null",
                 "--set", "block_duration=10", "--set", "test_fraction=0.25"]) == 0
    study = open_store(out)
    assert "wrote" in capsys.readouterr().out
    segments = study.provenance["parameters"]["segments"]
    assert (segments["block_duration"], segments["test_fraction"]) == (10, 0.25)
    steps = [step["step"] for step in study.recordings()[0].attrs["preprocessing"]]
    assert "bandpass" not in steps and "resample" in steps
    assert study.recordings()[0].sfreq == 120.0

    shutil.rmtree(root / "Stimuli" / "Audio")
    assert main(["convert", "broderick2019", str(tmp_path), str(tmp_path / "again.zarr")]) == 1
    assert "audio1.wav does not exist" in capsys.readouterr().err
    assert not (tmp_path / "again.zarr").exists()
    assert main(["convert", "no-such-study", str(tmp_path), str(tmp_path / "x.zarr")]) == 1
    assert "known recipes" in capsys.readouterr().err
