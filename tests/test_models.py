"""Brain encoders: one suite run over every registered model, plus each model's own checks.

Shared suite (braindecode's test_models pattern), over ``list_models()`` with tiny configs:
output shapes, save/load round trip, determinism, gradient flow, subject routing,
torch.compile. Then paper-size parameter counts derived by hand, and model-specific
behaviour compared with independent computations (MNE's layouts, torch's own transformer
layer, explicit per-sample matrix products).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neurodec.errors import ConfigError, RegistryError
from neurodec.models import (
    AtmEncoder,
    BrainEncoder,
    BrainMagickEncoder,
    FourierPositionEmbedding,
    MindEyeEncoder,
    NiceEncoder,
    SelfAttentionLayer,
    SpatialAttention,
    SubjectLinear,
    create_model,
    get_model_class,
    list_models,
    load_pretrained,
    project_positions_2d,
    register_model,
    shallow_feature_size,
)

# Small configs of every registered model; a new model must add one (see the test below).
TINY_CONFIGS: dict[str, dict] = {
    "brainmagick": dict(n_chans=7, n_times=32, n_subjects=3, n_outputs=8, spatial_channels=6, position_dim=8,
                        hidden_channels=8, n_blocks=4),
    "nice": dict(n_chans=7, n_times=60, n_subjects=3, n_outputs=16, n_filters=4, temporal_kernel=5, pool_kernel=5,
                 pool_stride=2),
    "atm": dict(n_chans=7, n_times=60, n_subjects=3, n_outputs=16, n_filters=4, temporal_kernel=5, pool_kernel=5,
                pool_stride=2, attention_heads=3, attention_feedforward=12),
    "mindeye": dict(n_voxels=[40, 25, 33], n_outputs=6, n_tokens=3, hidden_dim=16, n_blocks=2,
                    low_level_channels=2, low_level_size=8, low_level_seed_channels=4, low_level_seed_size=2),
    "mindbridge": dict(n_voxels=[40, 25, 33], n_outputs=6, n_tokens=None, pool_size=20, hidden_dim=16, n_blocks=2,
                       adapter_bottleneck=4),
}


def expected_shape(name: str, batch: int) -> tuple[int, ...]:
    config = TINY_CONFIGS[name]
    if name == "brainmagick":
        return (batch, config["n_outputs"], config["n_times"])
    if name in ("mindeye", "mindbridge") and config["n_tokens"]:
        return (batch, config["n_tokens"], config["n_outputs"])
    return (batch, config["n_outputs"])


def build(name: str, seed: int = 0, **overrides) -> BrainEncoder:
    torch.manual_seed(seed)
    return create_model(name, **{**TINY_CONFIGS[name], **overrides})


def all_subject_inputs(model: BrainEncoder, batch: int = 6) -> dict:
    """Dummy inputs whose batch holds every subject (so every subject's weights are used)."""
    assert batch >= model.n_subjects
    return model.dummy_inputs(batch_size=batch, seed=3)


ALL_MODELS = list_models()


# ----------------------------------------------------------------- registry
def test_registry_lists_the_published_encoders():
    assert ALL_MODELS == ["atm", "brainmagick", "mindbridge", "mindeye", "nice"]
    assert get_model_class("nice") is NiceEncoder and get_model_class("atm") is AtmEncoder


def test_every_registered_model_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == ALL_MODELS


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(RegistryError) as error:
        create_model("eegnet")
    for name in ALL_MODELS:
        assert name in str(error.value)
    with pytest.raises(RegistryError):
        get_model_class("EEGNet")


def test_register_model_refuses_non_encoders_and_name_clashes():
    with pytest.raises(TypeError):
        register_model("not_a_model")(torch.nn.Linear)
    with pytest.raises(RegistryError, match="already registered"):
        @register_model("nice")
        class Other(BrainEncoder):
            def __init__(self, n_outputs: int = 2):
                super().__init__(n_outputs=n_outputs)


def test_constructor_arguments_must_be_named():
    with pytest.raises(TypeError, match="no \\*args/\\*\\*kwargs"):
        class Loose(BrainEncoder):
            def __init__(self, **options):
                super().__init__(n_outputs=1)


# ----------------------------------------------------------- shared suite
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_output_shapes(name):
    model = build(name)
    for mode in (model.train, model.eval):
        mode()
        out = model(**model.dummy_inputs(batch_size=5))
        assert out.shape == expected_shape(name, 5)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_config_records_every_constructor_argument(name):
    model = build(name)
    config = model.config
    for key, value in TINY_CONFIGS[name].items():
        assert config[key] == value
    rebuilt = type(model)(**config)
    assert rebuilt.config == config
    assert json.loads(json.dumps(config)) == config
    config["n_outputs"] = -5  # a copy: the model's own config is untouched
    assert model.config["n_outputs"] == TINY_CONFIGS[name]["n_outputs"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    model = build(name).eval()
    inputs = model.dummy_inputs(batch_size=4)
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    document = json.loads((folder / "config.json").read_text())
    assert document["model"] == name and document["config"] == model.config
    for loader in (load_pretrained, type(model).from_pretrained, BrainEncoder.from_pretrained):
        loaded = loader(folder).eval()
        assert type(loaded) is type(model)
        with torch.no_grad():
            assert torch.equal(loaded(**inputs), model(**inputs))
        state, loaded_state = model.state_dict(), loaded.state_dict()
        assert state.keys() == loaded_state.keys()
        for key in state:
            assert torch.equal(state[key], loaded_state[key]) or torch.isnan(state[key]).all(), key


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_seed_gives_same_weights_and_outputs(name):
    first, second, other = build(name, seed=7), build(name, seed=7), build(name, seed=8)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b) or (torch.isnan(a) == torch.isnan(b)).all(), key
    inputs = first.dummy_inputs(batch_size=4)
    first.eval(), second.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(first(**inputs), second(**inputs))
        assert not torch.allclose(first(**inputs), other(**inputs))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradient_reaches_every_parameter(name):
    model = build(name).train()
    inputs = all_subject_inputs(model)
    outputs = model.forward_outputs(**inputs)
    generator = torch.Generator().manual_seed(0)
    # Random weights, not a plain sum: the sum of a LayerNorm output has zero gradient.
    loss = sum((value * torch.randn(value.shape, generator=generator)).sum() for value in outputs.values())
    loss.backward()
    exempt = model.parameters_without_gradient
    for param_name, parameter in model.named_parameters():
        if any(pattern in param_name for pattern in exempt):
            assert parameter.grad is None or not parameter.grad.any(), param_name
        else:
            assert parameter.grad is not None and parameter.grad.abs().max() > 0, f"no gradient reaches {param_name}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_subject_routing(name):
    model = build(name).eval()
    inputs = all_subject_inputs(model)
    subject = inputs["subject"]
    with torch.no_grad():
        reference = model(**inputs)
    if not model.is_subject_specific:
        # Nothing depends on the subject: relabelling the samples changes nothing.
        inputs_relabelled = dict(inputs, subject=(subject + 1) % model.n_subjects)
        if name == "brainmagick":
            pytest.fail("brainmagick has a subject layer")
        with torch.no_grad():
            assert torch.equal(model(**inputs_relabelled), reference)
        return

    # One sample read by two subjects' weights gives two outputs.
    single = {key: value[:1] if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    with torch.no_grad():
        as_subject_0 = model(**dict(single, subject=torch.tensor([0])))
        as_subject_1 = model(**dict(single, subject=torch.tensor([1])))
    assert not torch.allclose(as_subject_0, as_subject_1)

    # Zeroing subject 1's own weights changes its samples' outputs and no other sample's.
    with torch.no_grad():
        for view in model.subject_weights(1):
            view.zero_()
        changed = model(**inputs)
    is_one = subject == 1
    assert torch.equal(changed[~is_one], reference[~is_one])
    difference = (changed[is_one] - reference[is_one]).flatten(1).abs().amax(dim=1)
    assert (difference > 1e-6).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_subject_index_out_of_range_is_refused(name):
    model = build(name).eval()
    inputs = model.dummy_inputs(batch_size=2)
    with pytest.raises(ValueError, match="subject"):
        model(**dict(inputs, subject=torch.tensor([0, model.n_subjects])))


def test_torch_compile_matches_eager_fast_backend():
    """aot_eager traces the model with Dynamo + AOTAutograd (the whole graph, forward and
    backward) without generating C++; the inductor backend takes 15-45 s on 2 CPU cores
    here, so it is in the slow test below."""
    for name in ("brainmagick",):
        model = build(name).train()
        inputs = model.dummy_inputs(batch_size=4)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.manual_seed(1)
        expected = model(**inputs)
        torch.manual_seed(1)
        result = compiled(**inputs)
        torch.testing.assert_close(result, expected)
        result.square().mean().backward()


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    model = build("brainmagick").eval()
    inputs = model.dummy_inputs(batch_size=4)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs), model(**inputs), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------- paper-size param counts
def brainmagick_parameter_count(n_subjects: int, n_outputs: int) -> int:
    """Défossez et al. 2023, counted layer by layer (conv weight = in * out * kernel, + out bias)."""
    spatial_attention = 270 * 2048                   # one 2048-d query per virtual channel, no bias
    initial_conv = 270 * 270 * 1 + 270               # 1x1 conv
    subject_layer = n_subjects * 270 * 270           # one 270 x 270 matrix per subject, no bias
    first_block = 270 * 320 * 3 + 320                # 270 -> 320, kernel 3 (no skip: shapes differ)
    other_blocks = 9 * (320 * 320 * 3 + 320)         # 320 -> 320, kernel 3, residual
    batch_norms = 10 * (320 + 320)                   # scale and shift of each block
    glus = 5 * (320 * 640 * 3 + 640)                 # after blocks 2, 4, 6, 8, 10: 320 -> 640, kernel 3
    final = (320 * 640 + 640) + (640 * n_outputs + n_outputs)  # 1x1 convs 320 -> 640 -> F
    return (spatial_attention + initial_conv + subject_layer + first_block + other_blocks + batch_norms + glus
            + final)


def nice_parameter_count(n_chans: int, n_times: int, n_outputs: int, n_filters: int = 40) -> int:
    steps = ((n_times - 25 + 1) - 51) // 5 + 1       # temporal conv 25, avg pool 51 stride 5
    feature = n_filters * steps
    convs = (n_filters * 25 + n_filters) + (n_filters * n_filters * n_chans + n_filters) \
        + (n_filters * n_filters + n_filters)        # temporal, spatial (n_chans x 1), 1x1 conv
    batch_norms = 2 * (2 * n_filters)
    projection = (feature * n_outputs + n_outputs) + (n_outputs * n_outputs + n_outputs) + 2 * n_outputs
    return convs + batch_norms + projection


def atm_parameter_count(n_chans: int, n_times: int, n_subjects: int, n_outputs: int) -> int:
    d, heads, feedforward = n_times, 4, 256
    inner = heads * (d // heads)                     # 4 heads of 62 features = 248
    token_embedding = d * d + d
    attention = 3 * (d * inner + inner) + (inner * d + d)
    feedforward_layers = (d * feedforward + feedforward) + (feedforward * d + d)
    norms = 3 * 2 * d                                # after attention, after feed-forward, final
    subject_tokens = n_subjects * d
    return (token_embedding + attention + feedforward_layers + norms + subject_tokens
            + nice_parameter_count(n_chans, d, n_outputs))


def mindeye_parameter_count(n_voxels, hidden, n_blocks, n_tokens, d, low_level=(4, 28, 64, 7)) -> int:
    adapters = sum(n * hidden + hidden for n in n_voxels)
    blocks = n_blocks * (2 * hidden + 2 * (hidden * hidden + hidden))  # LayerNorm, two Linear
    head = hidden * n_tokens * d + n_tokens * d
    projector = 3 * (2 * d) + 3 * (d * d + d)        # three LayerNorm + Linear(d, d)
    channels, size, seed_channels, seed_size = low_level
    doublings = int(math.log2(size // seed_size))
    low = (hidden * seed_channels * seed_size**2 + seed_channels * seed_size**2) + 2 * seed_channels \
        + doublings * (seed_channels * seed_channels * 9 + seed_channels + 2 * seed_channels) \
        + (seed_channels * channels + channels)
    return adapters + blocks + head + projector + low


def mindbridge_parameter_count(n_voxels, pool, hidden, n_blocks, n_tokens, d, bottleneck) -> int:
    embedder = (pool * bottleneck + bottleneck) + (bottleneck * pool + pool) + (pool * hidden + hidden) + 2 * hidden
    blocks = n_blocks * (hidden * hidden + hidden + 2 * hidden)  # Linear, LayerNorm
    head = hidden * n_tokens * d + n_tokens * d
    return len(n_voxels) * embedder + blocks + head


NSD_VOXELS = [15724, 14278, 15226, 13153, 13039, 17907, 12682, 14386]

PAPER_SIZE = {
    # name: (hand-derived count, the same number written out)
    "brainmagick": (brainmagick_parameter_count(n_subjects=27, n_outputs=1024), 9_565_054),
    "nice": (nice_parameter_count(n_chans=63, n_times=250, n_outputs=768), 1_802_496),
    "atm": (atm_parameter_count(n_chans=63, n_times=250, n_subjects=10, n_outputs=1024), 3_075_162),
    "mindeye": (mindeye_parameter_count(NSD_VOXELS, 4096, 4, 256, 1664), 2_377_570_756),
    "mindbridge": (mindbridge_parameter_count(NSD_VOXELS, 8192, 2048, 2, 257, 768, 128), 563_934_976),
}


def test_hand_derived_counts_are_the_written_numbers():
    for name, (derived, written) in PAPER_SIZE.items():
        assert derived == written, name
    assert shallow_feature_size(250, 40, 25, 51, 5) == 1440  # NICE's 1440-d feature


@pytest.mark.parametrize("name", ALL_MODELS)
def test_paper_size_parameter_count(name):
    # Built on the meta device: full structure, no memory (MindEye2 is 2.4 billion parameters).
    with torch.device("meta"):
        model = create_model(name)
    assert model.num_parameters() == PAPER_SIZE[name][0]


def test_paper_size_models_under_a_billion_parameters_build_for_real():
    for name in ("brainmagick", "nice", "atm"):
        torch.manual_seed(0)
        model = create_model(name)
        assert model.num_parameters() == PAPER_SIZE[name][0]
        model.eval()
        with torch.no_grad():
            out = model(**model.dummy_inputs(batch_size=2))
        assert out.shape == {"brainmagick": (2, 1024, 360), "nice": (2, 768), "atm": (2, 1024)}[name]


def test_reduced_mindeye_has_the_structure_the_formula_counts():
    config = dict(n_voxels=[300, 200], n_outputs=12, n_tokens=5, hidden_dim=32, n_blocks=4,
                  low_level_channels=4, low_level_size=28, low_level_seed_channels=8, low_level_seed_size=7)
    model = create_model("mindeye", **config)
    assert model.num_parameters() == mindeye_parameter_count([300, 200], 32, 4, 5, 12, low_level=(4, 28, 8, 7))
    outputs = model.eval().forward_outputs(**model.dummy_inputs(batch_size=2))
    assert outputs["embedding"].shape == (2, 5, 12) and outputs["backbone"].shape == (2, 5, 12)
    assert outputs["low_level"].shape == (2, 4, 28, 28)
    reduced_bridge = create_model("mindbridge", n_voxels=[300, 200], n_outputs=12, n_tokens=5, pool_size=64,
                                  hidden_dim=32, n_blocks=2, adapter_bottleneck=8)
    assert reduced_bridge.num_parameters() == mindbridge_parameter_count([300, 200], 64, 32, 2, 5, 12, 8)


# --------------------------------------------------------- save/load errors
def test_saved_folder_refuses_mismatched_or_missing_parts(tmp_path):
    model = build("nice")
    folder = model.save_pretrained(tmp_path / "nice")
    # A config edited after saving no longer matches the weights.
    document = json.loads((folder / "config.json").read_text())
    document["config"]["projection_dropout"] = 0.1
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="config_sha256"):
        load_pretrained(folder)
    document["config"]["projection_dropout"] = 0.5
    document["config"]["unknown_option"] = 3
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="unknown_option"):
        load_pretrained(folder)
    model.save_pretrained(folder)
    with pytest.raises(ConfigError, match="not a BrainMagickEncoder"):
        BrainMagickEncoder.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "nowhere")


def test_unregistered_subclass_cannot_be_saved(tmp_path):
    class Unregistered(NiceEncoder):
        pass

    with pytest.raises(RegistryError, match="not registered"):
        Unregistered(**TINY_CONFIGS["nice"]).save_pretrained(tmp_path / "x")


def test_config_values_must_be_json():
    class Labelled(BrainEncoder):
        def __init__(self, n_outputs: int = 2, label: object = None, scale: float = 1.0):
            super().__init__(n_outputs=n_outputs)

    # numpy values become plain JSON numbers; other objects cannot be saved.
    assert Labelled(n_outputs=np.int64(3), scale=np.float32(0.5)).config == {"n_outputs": 3, "label": None,
                                                                            "scale": 0.5}
    assert Labelled(label=(1, 2)).config["label"] == [1, 2]
    with pytest.raises(ConfigError, match="JSON"):
        Labelled(label=object())


# ------------------------------------------------------------- brainmagick
def test_positions_projection_matches_mne_layout():
    mne = pytest.importorskip("mne")
    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info(montage.ch_names, 250.0, "eeg")
    info.set_montage(montage)
    positions_3d = np.array([channel["loc"][:3] for channel in info["chs"]])
    layout = mne.channels.make_eeg_layout(info)
    # MNE's layout boxes are an isotropic rescaling of the projected points, so the same
    # per-axis [0, 1] normalisation makes them equal.
    expected = layout.pos[:, :2]
    expected = (expected - expected.min(0)) / (expected.max(0) - expected.min(0))
    np.testing.assert_allclose(project_positions_2d(positions_3d).numpy(), expected, atol=1e-5)


def test_positions_projection_by_hand():
    r = 0.1
    origin = (0.0, 0.01, 0.04)
    # Straight above the origin -> centre; on the equator -> radius r; 45 degrees down from
    # the top towards +y -> half way along +y; a NaN row stays NaN.
    points = np.array([
        [0.0, 0.01, 0.04 + r],
        [-r, 0.01, 0.04],
        [0.0, 0.01 + r * math.sin(math.pi / 4), 0.04 + r * math.cos(math.pi / 4)],
        [np.nan, 0.0, 0.0],
    ])
    flat = project_positions_2d(points, origin=origin, normalize=False).numpy()
    np.testing.assert_allclose(flat[:3], [[0.0, 0.0], [-r, 0.0], [0.0, r / 2]], atol=1e-7)
    assert np.isnan(flat[3]).all()
    normalized = project_positions_2d(points, origin=origin).numpy()
    np.testing.assert_allclose(normalized[:3], [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], atol=1e-6)


def test_fourier_embedding_by_hand():
    embedding = FourierPositionEmbedding(dimension=8, margin=0.2)  # 2 x 2 frequency pairs
    x, y = 0.3, 0.7
    phases = [2 * math.pi * (kx * (x + 0.2) + ky * (y + 0.2)) / 1.4 for kx in (0, 1) for ky in (0, 1)]
    expected = [math.cos(p) for p in phases] + [math.sin(p) for p in phases]
    np.testing.assert_allclose(embedding(torch.tensor([[x, y]])).numpy()[0], expected, atol=1e-6)
    with pytest.raises(ConfigError, match="2 \\* k\\*\\*2"):
        FourierPositionEmbedding(dimension=100)


def test_subject_linear_equals_per_sample_matrix_product():
    torch.manual_seed(0)
    layer = SubjectLinear(4, 3, n_subjects=3, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x, subject = torch.randn(5, 4, 6), torch.tensor([2, 0, 1, 2, 0])
    expected = torch.stack([layer.weight[s].T @ x[i] + layer.bias[s][:, None] for i, s in enumerate(subject.tolist())])
    torch.testing.assert_close(layer(x, subject), expected)


def test_brainmagick_block_layout_follows_the_paper():
    model = create_model("brainmagick")
    assert [block.conv.dilation[0] for block in model.blocks] == [1, 2, 4, 8, 16, 1, 2, 4, 8, 16]
    assert [block.residual for block in model.blocks] == [False] + [True] * 9
    with_glu = [i for i, glu in enumerate(model.glus) if isinstance(glu, torch.nn.Sequential)]
    assert with_glu == [1, 3, 5, 7, 9]
    assert model.subject_layer.weight.shape == (27, 270, 270)
    assert model.spatial_attention.queries.shape == (270, 2048)


def test_spatial_attention_ignores_channel_order():
    model = build("brainmagick").eval()
    inputs = model.dummy_inputs(batch_size=3)
    permutation = torch.randperm(model.n_chans, generator=torch.Generator().manual_seed(5))
    permuted = dict(inputs, x=inputs["x"][:, permutation], positions=inputs["positions"][:, permutation])
    with torch.no_grad():
        torch.testing.assert_close(model(**permuted), model(**inputs), rtol=1e-5, atol=1e-6)
        # Permuting the data alone does change the output: positions matter.
        assert not torch.allclose(model(**dict(inputs, x=inputs["x"][:, permutation])), model(**inputs), atol=1e-4)


def test_spatial_attention_weights_and_dropout():
    torch.manual_seed(0)
    layer = SpatialAttention(n_virtual=3, position_dim=8, dropout_radius=0.2)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 6), torch.linspace(0, 1, 6), indexing="ij"), -1)
    positions = grid.reshape(1, 36, 2).repeat(4, 1, 1)
    positions[:, 0] = float("nan")  # channel 0 has no position: never used
    impulses = torch.eye(36).expand(4, 36, 36)  # output time t = weight of channel t
    layer.eval()
    weights = layer(impulses, positions)
    assert torch.equal(weights[..., 0], torch.zeros(4, 3))
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3))
    layer.train()
    weights = layer(impulses, positions)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3))
    dropped = weights[:, 0] == 0  # (samples, channels): the same channels for every virtual channel
    assert torch.equal(dropped[:, None].expand(4, 3, 36), weights == 0)
    for sample in range(4):
        gone = positions[sample][dropped[sample]][1:]  # skip channel 0 (no position)
        if len(gone) > 1:
            # Dropped sensors lie in one disk of radius 0.2.
            assert torch.cdist(gone, gone).max() <= 0.4 + 1e-6
    assert dropped[:, 1:].any(), "with sensors every 0.2, some should fall in a dropout disk"


def test_brainmagick_stored_montages_and_missing_channels(tmp_path):
    model = build("brainmagick").eval()
    inputs = model.dummy_inputs(batch_size=3)
    for s in range(model.n_subjects):
        model.set_subject_positions(s, inputs["positions"][inputs["subject"] == s][0])
    with torch.no_grad():
        torch.testing.assert_close(model(inputs["x"], inputs["subject"]), model(**inputs))
    # The stored montages travel with the saved weights.
    loaded = load_pretrained(model.save_pretrained(tmp_path / "saved")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs["x"], inputs["subject"]), model(**inputs))
    # A channel without position contributes nothing, whatever its data.
    positions = inputs["positions"].clone()
    positions[:, 2] = float("nan")
    changed = inputs["x"].clone()
    changed[:, 2] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(changed, inputs["subject"], positions),
                                   model(inputs["x"], inputs["subject"], positions))
    fresh = build("brainmagick")
    with pytest.raises(ValueError, match="no sensor positions for subjects"):
        fresh(inputs["x"], inputs["subject"])
    # Head-frame 3-D positions are projected on the way in.
    sphere_points = torch.nn.functional.normalize(torch.randn(model.n_chans, 3), dim=1) * 0.09
    sphere_points[:, 2] = sphere_points[:, 2].abs()
    model.set_subject_positions(0, sphere_points)
    torch.testing.assert_close(model.subject_positions[0], project_positions_2d(sphere_points))


def test_brainmagick_temporal_pooling_options():
    torch.manual_seed(0)
    resolved = build("brainmagick", temporal_pooling="none").eval()
    torch.manual_seed(0)
    mean = build("brainmagick", temporal_pooling="mean").eval()
    mean.load_state_dict(resolved.state_dict())
    inputs = resolved.dummy_inputs(batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(mean(**inputs), resolved(**inputs).mean(-1))
    linear = build("brainmagick", temporal_pooling="linear").eval()
    assert linear(**inputs).shape == (2, 8)
    with pytest.raises(ValueError, match="n_times=32"):
        linear(inputs["x"][..., :20], inputs["subject"], inputs["positions"])
    with pytest.raises(ConfigError, match="temporal_pooling"):
        build("brainmagick", temporal_pooling="max")


# ---------------------------------------------------------------- nice / atm
def test_atm_attention_layer_equals_torch_transformer_layer():
    torch.manual_seed(0)
    ours = SelfAttentionLayer(dim=12, n_heads=3, feedforward_dim=20).eval()
    reference = torch.nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, activation="gelu", batch_first=True).eval()
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight, ours.value.weight]))
        reference.self_attn.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        reference.self_attn.out_proj.load_state_dict(ours.out.state_dict())
        reference.linear1.load_state_dict(ours.feedforward[0].state_dict())
        reference.linear2.load_state_dict(ours.feedforward[3].state_dict())
        reference.norm1.load_state_dict(ours.norm_attention.state_dict())
        reference.norm2.load_state_dict(ours.norm_feedforward.state_dict())
        tokens = torch.randn(2, 5, 12)
        torch.testing.assert_close(ours(tokens), reference(tokens), rtol=1e-5, atol=1e-5)
    # ATM's 250-wide tokens with 4 heads: heads of 62 features, projected back to 250.
    atm_layer = SelfAttentionLayer(dim=250, n_heads=4, feedforward_dim=256)
    assert atm_layer.query.weight.shape == (248, 250) and atm_layer.out.weight.shape == (250, 248)


def test_nice_subject_embedding_without_attention_starts_neutral():
    model = build("nice", subject_embedding=True).eval()
    assert model.is_subject_specific
    inputs = model.dummy_inputs(batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), model(**dict(inputs, subject=torch.zeros(3, dtype=torch.long))))


def test_nice_rejects_wrong_input_shapes():
    model = build("nice").eval()
    with pytest.raises(ValueError, match="n_chans=7"):
        model(torch.randn(2, 6, 60), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="too few"):
        create_model("nice", n_chans=4, n_times=30, n_outputs=2)


# -------------------------------------------------------------------- fMRI
@pytest.mark.parametrize("name", ["mindeye", "mindbridge"])
def test_fmri_adapters_read_only_their_subjects_voxels(name):
    model = build(name).eval()
    inputs = all_subject_inputs(model)
    x, subject = inputs["x"], inputs["subject"]
    padded_with_nan = x.clone()
    for row, s in enumerate(subject.tolist()):
        padded_with_nan[row, model.n_voxels[s]:] = float("nan")
    with torch.no_grad():
        reference = model(x, subject)
        torch.testing.assert_close(model(padded_with_nan, subject), reference)
        # The per-subject dict layout of neurodec.data.collate gives the same outputs.
        by_subject = {s: x[subject == s, : model.n_voxels[s]] for s in range(model.n_subjects)}
        torch.testing.assert_close(model(by_subject, subject), reference)
        # Batch order is kept: each sample alone gives its own row.
        for row in range(len(subject)):
            torch.testing.assert_close(model(x[row : row + 1], subject[row : row + 1]), reference[row : row + 1])
    with pytest.raises(ValueError, match="voxels but x has only"):
        model(x[:, :30], subject)
    with pytest.raises(ValueError, match="dict has subjects"):
        model({0: by_subject[0]}, subject)


def test_mindbridge_shared_embedder_is_not_subject_specific():
    model = build("mindbridge", shared_embedder=True).eval()
    assert not model.is_subject_specific and model.subject_weights(0) == []
    # A new subject with a voxel count never seen enters the same pooled size.
    inputs = model.dummy_inputs(batch_size=3)
    assert model(**inputs).shape == (3, 6)


def test_mindeye_voxel_list_must_match_n_subjects():
    with pytest.raises(ConfigError, match="n_subjects=3"):
        MindEyeEncoder(n_voxels=[10, 20], n_subjects=3)
    with pytest.raises(ConfigError, match="positive voxel count"):
        MindEyeEncoder(n_voxels=[])
