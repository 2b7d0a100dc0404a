"""The experiment configs in configs/: each loads, validates, and builds its model.

Public-study configs build at their published size on the ``meta`` device (no memory), and
their sizes are checked against numbers worked out by hand from the papers' code. Demo configs
build for real at the demo cohort's shapes and run one forward pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from neurodec.config import load_config
from neurodec.losses import WeightedLoss
from neurodec.models import create_model
from tests.conftest import PROJECT_ROOT

CONFIGS = PROJECT_ROOT / "configs"
SPEECH = ["meg-masc/defossez.yaml", "schoffelen-mous/defossez.yaml", "brennan2019/defossez.yaml",
          "broderick2019/defossez.yaml"]
PUBLIC = ["things-eeg2/nice.yaml", "things-eeg2/atm.yaml", "things-meg/benchetrit.yaml", "nsd/mindeye2.yaml", *SPEECH]
DEMO = ["demo/eeg.yaml", "demo/meg.yaml", "demo/fmri.yaml"]
DEMO_SPEECH = ["demo/speech-meg.yaml", "demo/speech-eeg.yaml"]  # shapes: tests/test_simulate_speech.py

# The demo cohort (docs/demo-cohort.md, `neurodec info .neurodec/demo/demo.zarr`, seed 0).
DEMO_SHAPES = {"eeg": {"n_chans": 64, "n_times": 200, "sfreq": 200.0},
               "meg": {"n_chans": 128, "n_times": 200, "sfreq": 200.0},
               "fmri": {"n_voxels": [2474, 2075, 4904, 4586]}}
DEMO_SUBJECTS, DEMO_TRAIN_STIMULI, DEMO_TARGET_SIZE = 4, 700, 1280

# Signal arguments of the public studies, which the trainer would fill from the store.
PUBLIC_SHAPES = {
    "things-eeg2/nice.yaml": {"n_chans": 63, "n_times": 250, "sfreq": 250.0, "n_subjects": 10},
    "things-eeg2/atm.yaml": {"n_chans": 63, "n_times": 250, "sfreq": 250.0, "n_subjects": 10},
    "things-meg/benchetrit.yaml": {"n_chans": 271, "n_times": 180, "sfreq": 120.0, "n_subjects": 4},
    "nsd/mindeye2.yaml": {"n_voxels": [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386]},
    # Speech (Défossez et al. 2023): 3 s windows at 120 Hz. MEG-MASC: 208 KIT sensors, 27
    # subjects; MOUS: 273 CTF axial gradiometers, 96 auditory subjects; Brennan: 60 scalp
    # channels, the paper's 33 datasets; Broderick: 128 BioSemi channels, 19 subjects.
    "meg-masc/defossez.yaml": {"n_chans": 208, "n_times": 360, "sfreq": 120.0, "n_subjects": 27},
    "schoffelen-mous/defossez.yaml": {"n_chans": 273, "n_times": 360, "sfreq": 120.0, "n_subjects": 96},
    "brennan2019/defossez.yaml": {"n_chans": 60, "n_times": 360, "sfreq": 120.0, "n_subjects": 33},
    "broderick2019/defossez.yaml": {"n_chans": 128, "n_times": 360, "sfreq": 120.0, "n_subjects": 19},
}


def _model(config, shapes: dict, device: str | None = None):
    arguments = {**shapes, **config.model.arguments()}
    if device is None:
        return create_model(config.model.name, **arguments)
    with torch.device(device):
        return create_model(config.model.name, **arguments)


@pytest.mark.parametrize("name", PUBLIC + DEMO + DEMO_SPEECH)
def test_config_loads_and_its_loss_builds(name):
    config = load_config(CONFIGS / name)
    assert config.output.name  # a run folder name, so the same command resumes
    loss = WeightedLoss(config.loss.terms)
    assert set(loss.terms) == set(config.loss.terms)
    # Checkpoints are chosen on validation, never on test.
    assert config.train.selection_metric.startswith("val/")
    # Test trials of one stimulus are averaged (the image studies' protocols), except in speech
    # configs (windows of continuous recordings, data.window): each heard window is its own
    # query in Défossez et al. 2023.
    assert config.data.average_test_repetitions == (config.data.window is None)
    assert (config.data.window is not None) == (name in SPEECH + DEMO_SPEECH)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_config_builds_its_model_at_paper_size_on_meta(name):
    config = load_config(CONFIGS / name)
    model = _model(config, PUBLIC_SHAPES[name], device="meta")
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.mark.parametrize("name", SPEECH)
def test_speech_config_evaluates_as_defossez_et_al(name):
    config = load_config(CONFIGS / name)
    window = config.data.window
    assert (window.tmin, window.tmax, window.shift) == (-0.5, 2.5, 0.15)
    assert round((window.tmax - window.tmin) * PUBLIC_SHAPES[name]["sfreq"]) == PUBLIC_SHAPES[name]["n_times"]
    speech = config.evaluation.speech
    # brainmagick test.wer_negatives 10,000 (the true segment included); segment top-1 and
    # top-10; word-level top-10 (test.wer_topx).
    assert (speech.enabled, speech.max_negatives, speech.top_ks, speech.word_top_ks) == (True, 10_000, [1, 10], [10])
    model = _model(config, PUBLIC_SHAPES[name], device="meta")
    # One 270 x 270 matrix per subject; time-resolved 1024-d output for the wav2vec2 frames.
    assert sum(p.numel() for p in model.subject_layer.parameters()) == PUBLIC_SHAPES[name]["n_subjects"] * 270 * 270
    assert config.model.arguments()["temporal_pooling"] == "none" and model.n_outputs == 1024


def test_nice_config_has_nice_stand_values():
    config = load_config(CONFIGS / "things-eeg2/nice.yaml")
    # nice_stand.py: Adam(lr=0.0002, betas=(0.5, 0.999)), batch 1000, 200 epochs, best val loss.
    assert config.optim.lr == pytest.approx(2e-4)
    assert tuple(config.optim.betas) == (0.5, 0.999)
    assert config.optim.weight_decay == 0.0
    assert (config.train.batch_size, config.train.epochs) == (1000, 200)
    assert (config.train.selection_metric, config.train.mode) == ("val/loss", "min")
    # 740 validation images out of 16,540 training images.
    assert round(config.data.split.val_fraction * 16540) == 740
    assert config.data.average_train_repetitions and config.data.transforms[0].name == "mvnn"
    model = _model(config, PUBLIC_SHAPES["things-eeg2/nice.yaml"], device="meta")
    # 250 samples: conv (1, 25) -> 226, avgpool 51 stride 5 -> 36 steps, x 40 filters = 1440 (Proj_eeg's input).
    assert model.feature_size == 40 * ((250 - 25 + 1 - 51) // 5 + 1) == 1440
    # Parameters by hand: tsconv + 1x1 projection conv + Proj_eeg (two linears, one LayerNorm).
    convolutions = (40 * 25 + 40) + 2 * 40 + (40 * 40 * 63 + 40) + 2 * 40 + (40 * 40 + 40)
    projection = (1440 * 768 + 768) + (768 * 768 + 768) + 2 * 768
    assert sum(p.numel() for p in model.parameters()) == convolutions + projection == 1_802_496


def test_atm_config_has_atms_retrieval_values():
    config = load_config(CONFIGS / "things-eeg2/atm.yaml")
    # ATMS_retrieval.py: AdamW(lr=3e-4), batch 64, 40 epochs; Config: d_model 250, 4 heads, d_ff 256, dropout 0.25.
    assert config.optim.lr == pytest.approx(3e-4) and config.optim.weight_decay == pytest.approx(0.01)
    assert (config.train.batch_size, config.train.epochs) == (64, 40)
    arguments = config.model.arguments()
    assert (arguments["attention_dim"], arguments["attention_heads"], arguments["attention_feedforward"],
            arguments["attention_dropout"]) == (250, 4, 256, 0.25)
    model = _model(config, PUBLIC_SHAPES["things-eeg2/atm.yaml"], device="meta")
    assert model.n_outputs == 1024 and model.feature_size == 1440


def test_mindeye2_config_matches_the_published_shapes():
    config = load_config(CONFIGS / "nsd/mindeye2.yaml")
    model = _model(config, PUBLIC_SHAPES["nsd/mindeye2.yaml"], device="meta")
    # Per-subject adapters voxels -> 4096, head 4096 -> 256 x 1664 tokens.
    assert model.adapters[0].weight.shape == (4096, 15724)
    assert model.head.weight.shape == (256 * 1664, 4096)
    assert config.loss.mixco.until_fraction == pytest.approx(0.33)
    assert config.loss.terms["mixco"]["temperature"] == pytest.approx(0.006)
    assert config.data.voxel_batches == "pad"  # the trainer refuses mixco on per-subject tensors


def test_benchetrit_config_uses_the_defossez_brain_module_sizes():
    config = load_config(CONFIGS / "things-meg/benchetrit.yaml")
    arguments = config.model.arguments()
    assert (arguments["spatial_channels"], arguments["hidden_channels"], arguments["n_blocks"]) == (270, 320, 10)
    assert set(config.loss.terms) == {"clip", "mse"}
    model = _model(config, PUBLIC_SHAPES["things-meg/benchetrit.yaml"], device="meta")
    # One 270 x 270 subject matrix per subject.
    assert sum(p.numel() for p in model.subject_layer.parameters()) == 4 * 270 * 270


@pytest.mark.parametrize("name", DEMO)
def test_demo_config_builds_and_embeds_the_demo_shapes(name):
    config = load_config(CONFIGS / name)
    modality = config.data.modality
    assert config.data.store == ".neurodec/demo/demo.zarr"
    assert config.data.target == "efficientnet-lite0"
    shapes = dict(DEMO_SHAPES[modality])
    if modality != "fmri":
        shapes["n_subjects"] = DEMO_SUBJECTS
    shapes["n_outputs"] = DEMO_TARGET_SIZE
    torch.manual_seed(0)
    model = _model(config, shapes).eval()
    if hasattr(model, "set_subject_positions"):
        for subject in range(DEMO_SUBJECTS):
            model.set_subject_positions(subject, torch.rand(shapes["n_chans"], 2))
    inputs = model.dummy_inputs(batch_size=4)
    inputs.pop("positions", None)  # use the stored montages, as the trainer does
    with torch.no_grad():
        output = model(**inputs)
    assert output.shape == (4, DEMO_TARGET_SIZE)
    # Reduced sizes: the fMRI encoder's CLIP projector (3 x 1280 x 1280) dominates its ~9 M.
    assert sum(p.numel() for p in model.parameters()) < 10_000_000


@pytest.mark.parametrize("name", ["demo/eeg.yaml", "demo/meg.yaml"])
def test_demo_config_model_reads_the_temporally_pooled_input(name):
    # The trainer fills n_times and sfreq from the stored (unpooled) data; the config must
    # override them with the pooled values, or NICE's projection would expect 200 samples.
    config = load_config(CONFIGS / name)
    pools = [spec for spec in config.data.transforms if spec.name == "temporal_pool"]
    assert len(pools) == 1 and config.data.transforms[0].name == "temporal_pool"  # scaler fitted on pooled data
    stored = DEMO_SHAPES[config.data.modality]
    arguments = config.model.arguments()
    assert arguments["n_times"] == stored["n_times"] // pools[0].factor == 50
    assert arguments["sfreq"] == stored["sfreq"] / pools[0].factor
    model = _model(config, {**stored, "n_subjects": DEMO_SUBJECTS, "n_outputs": DEMO_TARGET_SIZE}).eval()
    # NICE's flattened feature: (50 - 5 + 1 - 11 + 1) pooled steps x 20 filters.
    assert model.feature_size == 36 * 20
    from neurodec.training._setup import build_transform

    pooled = build_transform(config).steps[0].transform(torch.randn(2, stored["n_chans"], stored["n_times"]).numpy())
    with torch.no_grad():
        output = model(torch.from_numpy(pooled), torch.zeros(2, dtype=torch.long))
    assert output.shape == (2, DEMO_TARGET_SIZE)


@pytest.mark.parametrize("name", DEMO)
def test_demo_config_validation_and_budget(name):
    config = load_config(CONFIGS / name)
    # Validation holds round(0.1 * 700) = 70 stimuli per subject; N-way needs N of them.
    val_per_subject = round(config.data.split.val_fraction * DEMO_TRAIN_STIMULI)
    assert val_per_subject == 70
    assert max(config.train.validation.n_ways) <= val_per_subject
    assert config.train.selection_metric == "val/50-way top-1"
    # Training stimuli are shown once: MVNN cannot be fitted (no repeated training trials).
    assert all(spec.name != "mvnn" for spec in config.data.transforms)
    # Steps: 4 subjects x 630 training trials, drop_last batches.
    steps_per_epoch = (DEMO_SUBJECTS * (DEMO_TRAIN_STIMULI - val_per_subject)) // config.train.batch_size
    total = config.train.epochs * steps_per_epoch
    assert 100 <= total <= 600, total
    assert math.isclose(config.optim.lr, 1e-3)
