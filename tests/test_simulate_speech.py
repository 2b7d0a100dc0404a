"""The demo cohort's auditory part: synthesised speech, TRF responses and the speech store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from neurodec.simulate.speech_audio import (
    NOISE_FLOOR,
    VOWELS,
    make_vocabulary,
    render_phone,
    resonator_sos,
    synthesise_story,
)

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


# ----------------------------------------------------------------------------- audio
def _harmonic_levels_db(samples: np.ndarray, f0: float, sample_rate: float = 16000.0):
    """Level (dB) of each harmonic of ``f0`` below 4 kHz in the steady middle of a vowel."""
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    n_fft = 1 << 16
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)), n=n_fft))
    frequencies = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    harmonics = np.arange(1, int(4000 / f0)) * f0
    levels = [spectrum[np.abs(frequencies - h) < f0 / 2].max() for h in harmonics]
    return harmonics, 20 * np.log10(levels)


@pytest.mark.parametrize("vowel", sorted(VOWELS))
def test_vowel_spectrum_peaks_at_its_formants(vowel):
    from scipy.signal import find_peaks

    f0 = 50.0  # harmonics every 50 Hz sample the spectral envelope finely enough to see each formant
    samples = render_phone(VOWELS[vowel], f0, f0, rate=0.3, rng=np.random.default_rng(0))
    harmonics, levels = _harmonic_levels_db(samples, f0)
    peaks, _ = find_peaks(levels, prominence=1.0)
    found = harmonics[peaks]
    formants = np.asarray(VOWELS[vowel].formants)
    tolerance = np.maximum(f0, 0.06 * formants)
    # Each of F1-F3 has a spectral peak next to it, and every peak is next to a formant (F4 included).
    for formant, allowed in zip(formants[:3], tolerance[:3]):
        assert np.min(np.abs(found - formant)) <= allowed, (vowel, formant, found)
    for peak in found:
        assert np.min(np.abs(formants - peak) - tolerance) <= 0, (vowel, peak, formants)


def test_resonator_matches_klatt_formula_and_peaks_at_its_frequency():
    from scipy.signal import sosfreqz

    sos = resonator_sos(1000.0, 100.0, 16000.0)
    frequencies, response = sosfreqz(sos, worN=16000, fs=16000.0)
    magnitude = np.abs(response)
    assert abs(frequencies[np.argmax(magnitude)] - 1000.0) < 5.0
    assert magnitude[0] == pytest.approx(1.0)  # unit gain at 0 Hz (A = 1 - B - C)
    # The -3 dB width is the bandwidth (within a few Hz at this sampling rate).
    above = frequencies[magnitude >= magnitude.max() / np.sqrt(2)]
    assert above.max() - above.min() == pytest.approx(100.0, abs=5.0)


def test_word_onsets_are_the_sounds_energy_onsets():
    vocabulary = make_vocabulary(30, np.random.default_rng(3))
    story = synthesise_story("s", vocabulary, 12.0, np.random.default_rng(4))
    rate = story.sample_rate
    assert len(story.words) >= 15 and set(story.words) <= {w.spelling for w in vocabulary}
    # Onsets sit on whole milliseconds, so segment ids (ms precision) name them exactly.
    np.testing.assert_array_equal(np.round(story.onsets * 1000), story.onsets * 1000)
    # Independently of the synthesiser: the 1 ms RMS envelope of the samples.
    frames = story.samples[: len(story.samples) // 16 * 16].astype(np.float64).reshape(-1, 16)
    envelope = np.sqrt((frames**2).mean(axis=1))
    threshold = 20 * NOISE_FLOOR
    loud = envelope > threshold
    # Rising edges after at least 30 ms of quiet: where sound starts after a pause.
    quiet_run = np.convolve(~loud, np.ones(30), mode="full")[: len(loud)] == 30
    starts = np.flatnonzero(loud[1:] & quiet_run[:-1]) + 1
    for onset in story.onsets:
        ms = int(round(onset * 1000))
        assert not loud[ms - 30 : ms].any(), f"sound before the word at {onset} s"
        assert np.min(np.abs(starts - ms)) <= 3, f"no energy onset within 3 ms of the word at {onset} s"
    assert abs(story.duration - 12.0) < 1e-9 and story.offsets[-1] <= 12.0 - 0.3


# ------------------------------------------------------------------------- responses
def test_trf_kernels_have_the_auditory_components():
    from neurodec.simulate.speech_responses import trf_kernel

    times = np.arange(60) / 120.0
    onset = trf_kernel("onset", 120.0)
    assert len(onset) == 60                                # 0-500 ms at 120 Hz
    assert abs(times[np.argmin(onset)] - 0.10) <= 1 / 120  # N1 (negative) at 100 ms
    late = times > 0.14
    # P2: positive, peaking near 190 ms (a little later: the N1's tail overlaps its rise).
    assert onset[late].max() > 0 and 0.18 <= times[late][np.argmax(onset[late])] <= 0.22
    shifted = trf_kernel("onset", 120.0, latency_shift_s=0.025)
    assert abs(times[np.argmin(shifted)] - 0.125) <= 1 / 120


def test_auditory_features_follow_the_sound():
    from neurodec.simulate.speech_responses import auditory_features

    rate, sfreq = 16000, 100.0
    times = np.arange(2 * rate) / rate
    tone = np.where((times >= 0.5) & (times < 1.5), np.sin(2 * np.pi * 1000 * times), 0.0)
    features = auditory_features(tone, rate, sfreq, word_onsets_s=[0.5])
    assert features.shape == (8, 200)
    bands = features[:6, 100]
    assert np.argmax(bands) == 2          # 1 kHz falls in the 700-1400 Hz band
    assert features[2, 20] == pytest.approx(0.0, abs=1e-9) and features[2, 100] > 0
    # Acoustic onset: the summed envelopes rise as the tone starts (within the 32 ms window).
    assert 47 <= int(np.argmax(features[6])) <= 51
    np.testing.assert_array_equal(np.flatnonzero(features[7]), [50])


def test_sensor_response_is_the_trf_convolution_through_the_leadfield():
    from neurodec.simulate.electrophysiology import compute_leadfield, make_source_model
    from neurodec.simulate.sensors import head_sphere, make_meg_info
    from neurodec.simulate.speech_responses import make_auditory_brain, sensor_response

    sfreq = 120.0
    sources = make_source_model(20.0, head_sphere())
    brain = make_auditory_brain(sources, sfreq, np.random.default_rng(1), np.random.default_rng(2))
    info = make_meg_info(sfreq, n_sensors=12)
    gain = compute_leadfield(info, sources, "meg")
    features = np.random.default_rng(3).random((8, 150))
    # By hand: each source's current is the sum over features of np.convolve with its
    # kernel (cut to the signal's length); each sensor sums gain . orientation x current.
    expected = np.zeros((12, 150))
    for s, source in enumerate(brain.sources):
        current = sum(np.convolve(features[f], brain.kernels[s, f])[:150] for f in range(8))
        expected += np.outer(gain[:, source, :] @ brain.orientations[s], current)
    response = sensor_response(features, brain, gain)
    np.testing.assert_allclose(response, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    # The sources are the two superior temporal planes: both hemispheres, lateral.
    relative = sources.positions[brain.sources] - np.asarray(sources.sphere.centre)
    assert (relative[:, 0] < -0.035).any() and (relative[:, 0] > 0.035).any()


# ------------------------------------------------------------------------------ store
@pytest.fixture(scope="module")
def tiny_speech(tmp_path_factory):
    from neurodec.simulate import simulate_speech

    out = tmp_path_factory.mktemp("speech") / "speech.zarr"
    study, report = simulate_speech(out, size="tiny", seed=0, modalities=("meg", "eeg"))
    return out, study, report


def test_store_events_line_up_with_the_word_onsets_to_the_sample(tiny_speech):
    _, study, report = tiny_speech
    table = study.stimuli
    metadata = {i: json.loads(m) for i, m in zip(table["id"].tolist(), table["metadata"].tolist())}
    # The sounds kept in the store: one segment per sound names its row of the content array.
    first_segment = {}
    for stimulus, entry in metadata.items():
        first_segment.setdefault(entry["sound"], stimulus)
    names = sorted(first_segment)
    sounds = dict(zip(names, study.stimulus_content([first_segment[n] for n in names])))
    assert report.segments["n_test"] == int((table["split"] == "test").sum()) > 0
    assert sorted(set(table["kind"].tolist())) == ["audio"]
    for recording in study.recordings():
        sfreq = recording.sfreq
        assert recording.layout == "continuous" and sfreq == 120.0
        story_onsets = recording.attrs["info"]["story_onsets_s"]
        events = recording.events
        for stimulus, sample, onset in zip(events["stimulus_id"], events["sample"], events["onset"]):
            entry = metadata[stimulus]
            # The stimulus id names the sound and the onset in it; the event sits at that
            # onset plus the story's start in the session, in samples of the stored array.
            assert stimulus == f"{entry['sound']}@{entry['onset']:.3f}s"
            expected = story_onsets[entry["sound"]] + entry["onset"]
            assert onset == pytest.approx(expected, abs=1e-9)
            assert sample == round(expected * sfreq)
        # Every segment heard once, but for words whose brain window would overlap, in recording
        # time, a window of the other split (where one story ends and the next begins).
        heard = events["stimulus_id"].tolist()
        assert len(set(heard)) == len(heard)
        assert len(heard) + recording.attrs["info"]["words_overlapping_other_split"] == len(table["id"])
        split = dict(zip(table["id"].tolist(), table["split"].tolist()))
        is_test = np.array([split[s] == "test" for s in heard])
        gaps = np.abs(events["onset"][is_test][:, None] - events["onset"][~is_test][None, :])
        assert gaps.min() >= 3.0 - 1e-9  # 3 s windows of the two splits never share a brain sample
    # In the stored sound, each segment's word starts exactly at its onset: quiet before, sound after.
    for stimulus, entry in metadata.items():
        samples = sounds[entry["sound"]]
        assert len(samples) >= entry["n_samples"] and entry["sample_rate"] == 16000
        start = int(round(entry["onset"] * entry["sample_rate"]))
        assert np.sqrt(np.mean(samples[start - 320 : start] ** 2)) < 3 * NOISE_FLOOR
        assert np.abs(samples[start : start + 80]).max() > 20 * NOISE_FLOOR


def test_store_is_a_realistic_continuous_recording(tiny_speech):
    _, study, report = tiny_speech
    meg = study.recording(subject="01", session="meg")
    eeg = study.recording(subject="01", session="eeg")
    assert meg.data.shape[0] == 96 and eeg.data.shape[0] == 64
    assert 1e-14 < np.std(meg.data[:, :1200]) < 1e-11 and 1e-7 < np.std(eeg.data[:, :1200]) < 1e-3
    assert meg.sensor_positions.shape == (96, 3) and len(meg.attrs["info"]["ch_loc"]) == 96
    for entry in report.recordings.values():
        assert 0 < entry["signal_fraction"] < 0.05
    # Subjects differ: their brains (latency offset) and sessions (story order) are their own.
    other = study.recording(subject="02", session="meg")
    assert meg.attrs["info"]["latency_offset_s"] != other.attrs["info"]["latency_offset_s"]


def test_brain_responses_are_locked_to_the_word_events(tmp_path):
    from neurodec.simulate import simulate_speech

    # Noise made negligible: the average over words of the stored MEG, aligned on the events'
    # samples, shows the auditory N1 (the TRFs' largest component) about 100 ms later.
    study, _ = simulate_speech(tmp_path / "loud.zarr", size="tiny", n_subjects=1, n_stories=1, snr_meg=100.0)
    recording = study.recordings()[0]
    data, samples = np.asarray(recording.data, dtype=np.float64), recording.events["sample"]
    lags = np.arange(-12, 49)  # -100 to +400 ms at 120 Hz
    evoked = np.mean([data[:, sample + lags] for sample in samples if sample + lags[0] >= 0], axis=0)
    evoked -= evoked[:, lags < 0].mean(axis=1, keepdims=True)
    field_power = evoked.std(axis=0)
    peak = lags[np.argmax(field_power)] / recording.sfreq
    assert 0.08 <= peak <= 0.15 and field_power.max() > 3 * field_power[lags == 0][0]


def test_simulation_is_deterministic_per_seed(tiny_speech, tmp_path):
    from neurodec.simulate import simulate_speech

    _, study, _ = tiny_speech
    again, _ = simulate_speech(tmp_path / "again.zarr", size="tiny", seed=0, modalities=("meg",), n_subjects=1)
    other, _ = simulate_speech(tmp_path / "other.zarr", size="tiny", seed=1, modalities=("meg",), n_subjects=1)
    first = study.recording(subject="01", session="meg").data
    np.testing.assert_array_equal(again.recording(subject="01", session="meg").data, first)
    np.testing.assert_array_equal(again.stimuli["id"], study.stimuli["id"])
    assert not np.array_equal(other.recording(subject="01", session="meg").data[:, :500], first[:, :500])
    assert other.stimuli["id"].tolist() != study.stimuli["id"].tolist()


def test_a_reused_store_is_not_rewritten(tmp_path):
    from neurodec.simulate import simulate_speech

    out = tmp_path / "speech.zarr"
    options = dict(size="tiny", n_subjects=1, n_stories=1, modalities=("meg",))
    first, report = simulate_speech(out, **options)
    assert not report.reused
    manifest = out / "zarr.json"
    stamp, created = manifest.stat().st_mtime_ns, first.manifest["created"]
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again, report = simulate_speech(out, reuse=True, **options)
    assert report.reused and report.segments["n_segments"] == len(again.stimuli["id"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    assert manifest.stat().st_mtime_ns == stamp and again.manifest["created"] == created
    # Other parameters: simulated again (with overwrite), never silently reused.
    changed, report = simulate_speech(out, reuse=True, overwrite=True, snr_meg=0.01, **options)
    assert not report.reused and manifest.stat().st_mtime_ns != stamp
    assert changed.provenance["parameters"]["snr_meg"] == 0.01


# --------------------------------------------------------------------------- pipeline
def test_meg_speech_pipeline_runs_on_a_tiny_store(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("meg_speech", PIPELINES / "meg_speech.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--out", str(tmp_path), "--size", "tiny"])
    from neurodec.store import open_store

    study = open_store(tmp_path / "speech-tiny.zarr")
    test_ids = set(study.stimuli["id"][study.stimuli["split"] == "test"].tolist())
    entry = result["results"]["speech"]["meg / brainmagick"]["metrics"]
    # Every test window ranked against every test segment: chance top-10 is 10 / n exactly.
    assert entry["n_segments"] == len(test_ids)
    assert entry["chance"]["pooled"]["segment top-10"] == pytest.approx(10 / len(test_ids))
    assert result["heard"] in test_ids and len(result["ranked"]) == 10 and set(result["ranked"]) <= test_ids
    assert "segment top-10" in capsys.readouterr().out


# -------------------------------------------------------------------------------- CLI
def test_demo_speech_stage_simulates_embeds_then_reuses(tmp_path, capsys):
    from neurodec.cli import main
    from neurodec.store import open_store

    out = tmp_path / "demo"
    arguments = ["demo", "--out", str(out), "--size", "tiny", "--only-speech", "--until", "targets"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert not (out / "demo.zarr").exists()  # --only-speech: the visual part is skipped
    study = open_store(out / "speech.zarr")
    ids, mel = study.targets("mel")
    assert mel.shape == (len(study.stimuli["id"]), 20, 120)  # 20 bands x 3 s at 40 Hz per segment
    assert "[demo] speech targets" in first and "signal fraction" in first
    assert main(arguments) == 0
    assert "reusing the speech store" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--no-speech", "--only-speech"]) == 1
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("name, n_chans", [("speech-meg.yaml", 128), ("speech-eeg.yaml", 64)])
def test_demo_speech_configs_give_the_mel_targets_shape(name, n_chans):
    import torch

    from neurodec.config import load_config
    from neurodec.models import get_model_class
    from neurodec.simulate.speech import DEMO_SPEECH_TARGET

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo" / name)
    assert config.data.store == ".neurodec/demo/speech.zarr" and config.data.target == "mel"
    window, target = config.data.window, DEMO_SPEECH_TARGET[1]
    # The stored 120 Hz windows, pooled, have exactly the mel target's frames (3 s at 40 Hz).
    pool = next(t.factor for t in config.data.transforms if t.name == "temporal_pool")
    n_times = round((window.tmax - window.tmin) * 120.0) // pool
    assert n_times == config.model.n_times == round(target["duration"] * target["rate"])
    model = get_model_class("brainmagick")(n_chans=n_chans, n_subjects=4, **config.model.arguments()).eval()
    for subject in range(4):
        model.set_subject_positions(subject, torch.rand(n_chans, 2))
    output = model(torch.randn(2, n_chans, n_times), torch.tensor([0, 3]))
    assert tuple(output.shape) == (2, target["n_mels"], n_times)
