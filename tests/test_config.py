"""The experiment config schema: YAML + dotted overrides, strict keys and types, one-line errors."""

from __future__ import annotations

import textwrap

import pytest

from neurodec.config import ExperimentConfig, apply_overrides, load_config, save_config
from neurodec.errors import ConfigError

YAML = textwrap.dedent(
    """
    data:
      store: study.zarr
      target: clip
      modality: eeg
      split: {by: stimulus, val_fraction: 0.2, seed: 3}
      transforms:
        - {name: robust_scaler}
        - {name: clamp, limit: 20}
        - {name: mvnn}
      window: {tmin: -0.5, tmax: 2.5, shift: 0.15}
    model:
      name: nice
      n_filters: 8
    loss:
      terms: {clip: 1.0, mse: {weight: 0.5}}
    optim: {lr: 3e-4, schedule: warmup_cosine, warmup_steps: 10, betas: [0.9, 0.98]}
    train:
      epochs: 3
      batch_size: 32
      selection_metric: val/200-way top-1
    """
)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "eeg-demo.yaml"
    path.write_text(YAML)
    return path


def test_a_yaml_file_loads_with_its_values_and_the_defaults(config_file):
    config = load_config(config_file)
    assert config.data.split.val_fraction == 0.2 and config.data.split.seed == 3
    assert [t.name for t in config.data.transforms] == ["robust_scaler", "clamp", "mvnn"]
    assert config.data.transforms[1].limit == 20.0 and config.data.transforms[2].shrinkage == "auto"
    assert config.data.window.shift == 0.15
    assert config.model.name == "nice" and config.model.arguments() == {"n_filters": 8}
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)  # YAML 1.1 would give a string
    assert config.optim.betas == (0.9, 0.98)
    assert config.loss.terms == {"clip": 1.0, "mse": {"weight": 0.5}}
    # Defaults, and the derived ones.
    assert config.train.precision == "fp32" and config.train.n_seeds == 1 and config.train.max_steps is None
    assert config.train.mode == "max"  # a retrieval metric is maximised
    assert load_config(config_file, ["train.selection_metric=val/loss"]).train.mode == "min"
    assert config.output.name == "eeg-demo"  # the file's stem: the same command finds the same run


def test_dotted_overrides_set_values_with_yaml_types(config_file):
    config = load_config(
        config_file,
        ["optim.lr=1e-3", "model.n_outputs=64", "train.precision=bf16", "data.subjects=['01', '02']",
         "train.early_stopping_patience=4", "data.split.by=runs", "loss.terms.mse.weight=2"],
    )
    assert config.optim.lr == 1e-3
    assert config.model.arguments() == {"n_filters": 8, "n_outputs": 64}
    assert config.train.precision == "bf16" and config.train.early_stopping_patience == 4
    assert config.data.subjects == ["01", "02"]
    with pytest.raises(ConfigError, match=r"data\.subjects\.0: Input should be a valid string \(found 1\)"):
        load_config(config_file, ["data.subjects=[01, 02]"])  # unquoted 01 is the number 1 in YAML
    assert config.data.split.by == "runs"
    assert config.loss.terms["mse"] == {"weight": 2}
    with pytest.raises(ConfigError, match=r"loss\.terms\.clip is a value, not a section"):
        load_config(config_file, ["loss.terms.clip.weight=2"])
    # The dict given is not changed in place.
    document = {"train": {"seed": 0}}
    assert apply_overrides(document, ["train.seed=5"]) == {"train": {"seed": 5}} and document["train"]["seed"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], r"unknown key 'train\.lrr'; train has \[.*'batch_size'"),
        (["trian.seed=1"], r"unknown key 'trian'"),
        (["data.split.val_fractions=0.1"], r"unknown key 'data\.split\.val_fractions'"),
        (["train.batch_size"], r"expects dotted\.key=value"),
        (["train.batch_size=many"], r"train\.batch_size: .*integer.*found 'many'"),
        (["train.precision=fp16"], r"train\.precision: Input should be 'fp32' or 'bf16'"),
        (["data.split.val_fraction=1.5"], r"data\.split\.val_fraction: .*less than 1"),
        (["train.selection_metric=test/200-way top-1"], r"never selected on training or test data"),
        (["train.epochs=null"], r"give epochs or max_steps"),
        (["data.transforms=[{name: clamp, limits: 3}]"], r"data\.transforms\.0\.clamp\.limits: unknown key"),
        (["data.transforms=[{name: whiten}]"], r"data\.transforms\.0: .*'standard_scaler'.*'mvnn'"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key_path(config_file, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(config_file, overrides)
    assert "\n" not in str(caught.value)


def test_unknown_keys_in_the_file_are_errors_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML.replace("  batch_size: 32", "  batch_size: 32\n  batchsize: 16")
                    .replace(" seed: 3}", " seed: 3, shuffle: true}"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "train.batchsize: unknown key" in message and "data.split.shuffle: unknown key" in message
    assert str(path) in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config({"model": {"name": "nice"}})
    with pytest.raises(ConfigError, match=r"data\.target: required key is missing"):
        load_config({"data": {"store": "s"}, "model": {"name": "nice"}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_the_resolved_config_round_trips_through_yaml(config_file, tmp_path):
    config = load_config(config_file, ["model.n_outputs=64", "optim.lr=1e-3"])
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    again = load_config(saved)
    assert again == config
    assert isinstance(again, ExperimentConfig) and again.model.arguments()["n_outputs"] == 64
