"""Speech decoding on a tiny continuous MEG store: training with brainmagick's time-resolved CLIP
loss, `neurodec evaluate` with the published segment retrieval (checked against windows cut,
transformed, embedded and ranked by hand), the mean and sd over two seeds, and two torchrun
processes against one with the same global batch.

The store is written the way a speech recipe writes one (neurodec.io.recipes._speech:
segments with held-out blocks, one event per heard word, MNE raws): two sounds of tone
"words" (one pitch per word), heard by two subjects whose 16 magnetometers sit on MNE's
Neuromag helmet; each subject's MEG is a subject-specific mix of the sound's mel spectrogram
150 ms later, plus noise. Targets are the mel spectrograms of the segments (8 bands, 40 Hz),
the brain is sampled at 40 Hz, so a 3 s window is 120 samples for both.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from neurodec.config import load_config
from neurodec.training import read_history, train

from test_speech_eval import brute_force
from test_train import launch_torchrun, tensors_of

SFREQ, SOUND_RATE, N_SENSORS = 40.0, 4000, 16
SOUND_SECONDS, LAG = 36.0, 0.15
WORDS = {"the": 220.0, "a": 330.0, "cat": 495.0, "sat": 660.0, "on": 880.0, "mat": 1100.0}
MEL = {"rate": SFREQ, "n_mels": 8, "n_fft": 128, "sample_rate": SOUND_RATE, "f_min": 50.0, "duration": 3.0}


def tone_words(rng, sound_id):
    """Words every ~0.45 s, each a 0.3 s tone at its word's pitch."""
    samples = 0.01 * rng.standard_normal(int(SOUND_SECONDS * SOUND_RATE))
    onsets, words = [], []
    t = 0.3
    while t < SOUND_SECONDS - 0.5:
        word = rng.choice(list(WORDS))
        start = int(t * SOUND_RATE)
        n = int(0.3 * SOUND_RATE)
        samples[start: start + n] += np.hanning(n) * np.sin(2 * np.pi * WORDS[word] * np.arange(n) / SOUND_RATE)
        onsets.append(round(t, 3))
        words.append(str(word))
        t += 0.4 + 0.1 * rng.random()
    return samples.astype(np.float32), onsets, words


def write_speech_meg_store(folder, seed=0):
    import mne
    from scipy.io import wavfile

    from neurodec.io.recipes._speech import HeardWords, SpeechRecording, write_speech_store
    from neurodec.io.speech import read_sound_file
    from neurodec.simulate.sensors import make_meg_info
    from neurodec.targets import Waveform, embed_stimuli, get_extractor

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    full_mel = get_extractor("mel", **{**MEL, "duration": None})
    sounds, mels, heard = [], {}, []
    for index in range(2):
        samples, onsets, words = tone_words(rng, f"story{index}")
        path = folder / f"story{index}.wav"
        wavfile.write(path, SOUND_RATE, samples)
        sounds.append(read_sound_file(path))
        mel = full_mel.embed([Waveform(samples, SOUND_RATE)])[0]
        mels[sounds[-1].id] = (mel - mel.mean(axis=1, keepdims=True)) / mel.std()
        heard.append((sounds[-1].id, onsets, words))

    starts = {"story0": 1.0, "story1": 2.0 + SOUND_SECONDS}
    n_samples = int((starts["story1"] + SOUND_SECONDS + 1.0) * SFREQ)
    recordings = []
    for subject in ("01", "02"):
        info = make_meg_info(SFREQ, n_sensors=N_SENSORS)
        mixing = rng.standard_normal((N_SENSORS, MEL["n_mels"]))
        data = rng.standard_normal((N_SENSORS, n_samples))
        words = HeardWords()
        for sound, onsets, spoken in heard:
            first = int(round((starts[sound] + LAG) * SFREQ))
            response = mixing @ mels[sound]
            data[:, first: first + response.shape[1]] += 2.0 * response
            for onset, word in zip(onsets, spoken):
                words.add(sound, onset, starts[sound] + onset, word)
        raw = mne.io.RawArray(1e-13 * data, info, verbose=False)
        recordings.append(SpeechRecording(subject=subject, session="01", run="01", task="listen", words=words,
                                          read_raw=lambda raw=raw: raw))
    store = folder / "speech.zarr"
    write_speech_store(store, recordings, sounds, converter="speech test",
                       segment_options={"block_duration": 9.0, "test_fraction": 0.25, "seed": 0})
    embed_stimuli(str(store), "mel", {**MEL}, key="mel")
    return store


@pytest.fixture(scope="module")
def speech_store(tmp_path_factory):
    return write_speech_meg_store(tmp_path_factory.mktemp("speech"))


def speech_config(store, runs_dir, name, **sections):
    document = {
        "data": {"store": str(store), "target": "mel", "window": {"tmin": -0.5, "tmax": 2.5, "shift": LAG},
                 "split": {"val_fraction": 0.2, "val_groups": "block", "seed": 0},
                 "transforms": [{"name": "standard_scaler"}], "average_test_repetitions": False},
        # No batch norm and no dropout: one process and two must see the same computation.
        "model": {"name": "brainmagick", "spatial_channels": 8, "position_dim": 32, "hidden_channels": 8,
                  "n_blocks": 2, "n_outputs": MEL["n_mels"], "temporal_pooling": "none", "spatial_dropout": 0.0,
                  "batch_norm": False},
        "loss": {"terms": {"brainmagick_clip": 1.0}},
        "optim": {"lr": 3e-3},
        "train": {"max_steps": 6, "epochs": None, "batch_size": 16, "log_every": 1, "val_every": 3,
                  "val_unit": "step", "checkpoint_every_steps": 100, "selection_metric": "val/full-set top-10",
                  "validation": {"n_ways": [], "full_set_top_ks": [1, 10], "n_repeats": 1}},
        "evaluation": {"ridge": {"time_pool": 4}},
        "output": {"runs_dir": str(runs_dir), "name": name},
    }
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    return document


def windows_by_hand(store, run_dir, part="test"):
    """Each subject's windows of the ``part`` split cut from the raw recording at the event sample
    (-0.5 + 0.15 s to 2.5 + 0.15 s), the run's saved transform, the saved encoder; with their segment ids."""
    from neurodec.data import load_transform
    from neurodec.models import load_pretrained
    from neurodec.store import open_store

    study = open_store(store)
    wanted = set(json.loads((run_dir / "splits.json").read_text())[part])
    labels = json.loads((run_dir / "data.json").read_text())["subject_labels"]
    transform = load_transform(run_dir / "transform")
    encoder = load_pretrained(run_dir / "best" / "encoder").eval()
    offset, length = int(round((-0.5 + LAG) * SFREQ)), int(round(3.0 * SFREQ))
    outputs, segment_ids, subjects = [], [], []
    for index, subject in enumerate(labels):
        recording = study.recording(subject=subject)
        data = np.asarray(recording.data[...])
        rows = [row for row, name in enumerate(recording.events["stimulus_id"].tolist()) if name in wanted]
        starts = recording.events["sample"][rows] + offset
        inside = (starts >= 0) & (starts + length <= data.shape[1])
        windows = np.stack([data[:, start: start + length] for start in starts[inside]]).astype(np.float32)
        windows = transform.transform(windows, subjects=np.full(len(windows), index))
        with torch.no_grad():
            outputs.append(encoder(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)),
                                   torch.full((len(windows),), index)).numpy())
        segment_ids += recording.events["stimulus_id"][rows][inside].tolist()
        subjects += [subject] * int(inside.sum())
    return np.concatenate(outputs), np.asarray(segment_ids), np.asarray(subjects)


def published_metrics_by_hand(store, brain, segment_ids, max_negatives=10_000, seed=0):
    """Segment top-1/top-10, word top-10 and their chance from a brute-force ranking against the
    distinct test segments (documented pool rule when capped)."""
    from math import comb

    from neurodec.store import open_store

    study = open_store(store)
    candidates = np.asarray(sorted(set(segment_ids.tolist())))
    ids, mel = study.targets("mel")
    targets = mel[[ids.tolist().index(name) for name in candidates]]
    table = study.stimuli
    metadata = {name: json.loads(text) for name, text in zip(table["id"].tolist(), table["metadata"].tolist())}
    words = [metadata[name]["word"] for name in candidates]
    segments = np.searchsorted(candidates, segment_ids)
    n = len(candidates)
    pool = np.arange(n) if n <= max_negatives else np.random.default_rng(seed).permutation(n)[:max_negatives]
    segment_rank, word_rank, same_word = brute_force(brain, targets, segments, words, pool)
    m = len(pool)
    return {
        "pooled": {"segment top-1": np.mean(segment_rank <= 1), "segment top-10": np.mean(segment_rank <= 10),
                   "word top-10": np.mean(word_rank <= 10)},
        "chance": {"segment top-1": 1 / m, "segment top-10": 10 / m,
                   "word top-10": np.mean([1 - comb(m - c, 10) / comb(m, 10) for c in same_word])},
        "n_segments": n, "n_candidates": m,
    }


def test_two_seeds_are_evaluated_as_published_with_mean_and_sd(speech_store, tmp_path):
    from neurodec.evaluation import evaluate_run

    document = speech_config(speech_store, tmp_path / "runs", "seeds", train={"n_seeds": 2, "seed": 0})
    run = train(load_config(document))
    assert [r.run_dir.name for r in run.seed_runs] == ["seed-0", "seed-1"]
    # Validation is drawn as whole blocks of the training sound; the test blocks are the store's.
    splits = json.loads((run.run_dir / "seed-0" / "splits.json").read_text())
    blocks = lambda part: {name.split("@")[0] + "#" + str(int(float(name.split("@")[1][:-1]) // 9))  # noqa: E731
                           for name in splits[part]}
    assert not blocks("val") & blocks("train") and not blocks("test") & (blocks("train") | blocks("val"))

    results = evaluate_run(run.run_dir, n_ways=(2,), n_repeats=2, n_bootstrap=200, n_permutations=0)
    speech = results["speech"]
    assert list(speech) == ["meg / brainmagick", "meg / brainmagick (seed-0)", "meg / brainmagick (seed-1)",
                            "meg / ridge"]
    pooled = {}
    for seed in ("seed-0", "seed-1"):
        brain, segment_ids, subjects = windows_by_hand(speech_store, run.run_dir / seed)
        expected = published_metrics_by_hand(speech_store, brain, segment_ids)
        metrics = speech[f"meg / brainmagick ({seed})"]["metrics"]
        # 28 test segments, less the 3 whose brain windows overlap training windows in recording
        # time (story1 starts 1 s after story0 ends) and are dropped when the store is written.
        assert metrics["n_segments"] == metrics["n_candidates"] == expected["n_segments"] == 25
        assert sum(metrics["n_queries"].values()) == len(segment_ids) and metrics["subjects"] == ["01", "02"]
        assert metrics["pooled"] == pytest.approx(expected["pooled"], abs=1e-12)
        assert metrics["chance"]["pooled"] == pytest.approx(expected["chance"], abs=1e-12)
        low, high = metrics["interval"]["segment top-10"]
        assert low <= metrics["pooled"]["segment top-10"] <= high
        pooled[seed] = metrics["pooled"]
        # Each seed's own report, in its folder.
        seed_report = json.loads((run.run_dir / seed / "report" / "report.json").read_text())
        assert seed_report["speech"]["meg / brainmagick"]["metrics"]["pooled"] == metrics["pooled"]
    assert pooled["seed-0"] != pooled["seed-1"]  # two trainings, two results
    summary = speech["meg / brainmagick"]["over_seeds"]
    for metric in ("segment top-1", "segment top-10", "word top-10"):
        values = [pooled["seed-0"][metric], pooled["seed-1"][metric]]
        assert summary["mean"][metric] == pytest.approx(np.mean(values))
        assert summary["sd"][metric] == pytest.approx(np.std(values, ddof=1))
    # The ridge baseline, once: a linear map of the mel spectrogram is what the brain holds here.
    ridge = speech["meg / ridge"]["metrics"]
    assert ridge["pooled"]["segment top-1"] >= 5 * ridge["chance"]["pooled"]["segment top-1"]
    assert ridge["pooled"]["segment top-10"] > ridge["chance"]["pooled"]["segment top-10"]
    markdown = (run.run_dir / "report" / "report.md").read_text()
    assert "Mean and sd over seeds" in markdown and "| meg / brainmagick | brainmagick | 2 |" in markdown

    # Evaluation settings do not block resuming: the finished runs are found, and their config
    # now caps the candidates at 10 per query (a pool drawn with the evaluation seed).
    train(load_config(document, ["evaluation.speech.max_negatives=10"]))
    capped = evaluate_run(run.run_dir / "seed-1", n_ways=(2,), n_repeats=2, n_bootstrap=0, n_permutations=0,
                          baselines=False, report=False, seed=5)
    brain, segment_ids, _ = windows_by_hand(speech_store, run.run_dir / "seed-1")
    expected = published_metrics_by_hand(speech_store, brain, segment_ids, max_negatives=10, seed=5)
    metrics = capped["speech"]["meg / brainmagick"]["metrics"]
    assert metrics["capped"] and metrics["n_candidates"] == 10 and metrics["max_negatives"] == 10
    assert metrics["pooled"] == pytest.approx(expected["pooled"], abs=1e-12)
    assert metrics["chance"]["pooled"] == pytest.approx(expected["chance"], abs=1e-12)

    train(load_config(document, ["evaluation.speech.enabled=false"]))
    off = evaluate_run(run.run_dir / "seed-1", n_ways=(2,), n_repeats=2, n_bootstrap=0, n_permutations=0,
                       baselines=False, report=False)
    assert "speech" not in off or not off["speech"]


def test_speech_switch_names_what_is_missing(tmp_path):
    from neurodec.errors import ConfigError
    from neurodec.evaluation.run import _speech_words
    from neurodec.store import open_store

    from test_train import write_meg_store

    # Audio stimuli in continuous recordings, but no words in their metadata.
    store = open_store(write_meg_store(tmp_path / "meg.zarr"))
    ids = np.asarray(store.stimuli["id"][:3])
    config = load_config({"data": {"store": str(store.url), "target": "wav2vec", "window": {}},
                          "model": {"name": "brainmagick"}})
    assert _speech_words(config, store, ids, tmp_path) is None  # auto: not a speech run
    config.evaluation.speech.enabled = True
    with pytest.raises(ConfigError, match=r"evaluation\.speech\.enabled is true, but test stimulus 'w-00' has no "
                                          r"'word' in its metadata"):
        _speech_words(config, store, ids, tmp_path)
    config.data.window = None
    with pytest.raises(ConfigError, match=r"reads epoched trials \(data\.window is not set\)"):
        _speech_words(config, store, ids, tmp_path)


def test_two_processes_give_the_negatives_and_metrics_of_one(speech_store, tmp_path):
    document = speech_config(speech_store, tmp_path / "runs", "ddp")
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(document))
    launch_torchrun(config_path, tmp_path / "two", cwd=tmp_path)
    one = train(load_config(config_path), run_dir=tmp_path / "one")
    two_history = read_history(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert [r["step"] for r in two_history] == [r["step"] for r in one.history]
    validations = [(a, b) for a, b in zip(one.history, two_history, strict=True) if "val/loss" in a]
    assert [single["step"] for single, _ in validations] == [3, 6]
    for single, double in validations:
        assert double["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
        for name in ("val/full-set top-1", "val/full-set top-10"):
            assert double[name] == pytest.approx(single[name], abs=1e-9), name
    for single, double in zip(one.history, two_history):
        if "train/loss" in single:  # the CLIP loss over the global batch: the same 16 x 16 negatives
            assert double["train/loss"] == pytest.approx(single["train/loss"], rel=1e-4)
    final_one, final_two = tensors_of(tmp_path / "one" / "last"), tensors_of(tmp_path / "two" / "last")
    assert final_one.keys() == final_two.keys()
    # Column 0 of the spatial attention's queries weighs the constant Fourier feature cos(0) = 1:
    # it adds the same amount to every sensor's score, which the softmax over sensors ignores, so
    # its exact gradient is 0 and Adam turns the rounding noise of that 0 (which differs with the
    # order of the sums) into steps of about the learning rate. It cannot change any output: the
    # outputs of both runs on the validation windows are compared below.
    for tensors in (final_one, final_two):
        tensors["spatial_attention.queries"] = tensors["spatial_attention.queries"][:, 1:]
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=1e-4, atol=1e-5)
    outputs = [windows_by_hand(speech_store, folder, part="val")[0] for folder in (tmp_path / "one", tmp_path / "two")]
    assert outputs[0].shape[1:] == (MEL["n_mels"], 120)
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)


def test_streamed_evaluation_equals_the_unchunked_one_and_says_what_it_left_out(speech_store, tmp_path):
    """Windows embedded and ranked 5 at a time under a budget of a few kB give the speech
    numbers of one ranking of every prediction at once; the sections that need every
    flattened prediction are cut down (retrieval) or left out (ridge), and say why."""
    from neurodec.evaluation import evaluate_run, load_encoder
    from neurodec.evaluation.run import _rebuild_splits, _speech_candidates
    from neurodec.metrics import segment_retrieval
    from neurodec.store import open_store
    from neurodec.training._setup import make_dataset

    run = train(load_config(speech_config(speech_store, tmp_path / "runs", "stream")))
    options = dict(n_ways=(2,), n_repeats=2, n_bootstrap=100, n_permutations=0, report=False)
    full = evaluate_run(run.run_dir, **options)
    tiny = evaluate_run(run.run_dir, max_memory_gb=1e-5, chunk_items=5, **options)

    # The unchunked path: every prediction embedded at once, ranked in one call.
    trained = load_encoder(run.run_dir)
    study = open_store(speech_store)
    splits = _rebuild_splits(run.run_dir, json.loads((run.run_dir / "splits.json").read_text()), ("test",))
    test_set = make_dataset(trained.config, study, splits, "test", average=False)
    test_set.transform = trained.transform
    brain = trained.embed_dataset(test_set)
    ids, candidates, segments = _speech_candidates(study, "mel", np.asarray(test_set.stimulus_ids))
    all_ids, all_targets = study.targets("mel")
    np.testing.assert_array_equal(candidates, all_targets[[all_ids.tolist().index(i) for i in ids]])
    subjects = np.asarray(trained.subject_labels)[np.asarray(test_set.subject_index)]
    metadata = dict(zip(study.stimuli["id"].tolist(), study.stimuli["metadata"].tolist()))
    words = [json.loads(metadata[name])["word"] for name in ids]
    expected = segment_retrieval(brain, candidates, segments, words=words, subjects=subjects, n_bootstrap=100)
    for results in (full, tiny):
        assert results["speech"]["meg / brainmagick"]["metrics"] == expected

    # Full budget: every section, the ridge too; tiny budget: no ridge, retrieval on a subset.
    assert "meg / ridge" in full["baselines"] and "meg / ridge" in full["speech"]
    assert "skipped" not in full["meta"] and "note" not in full["retrieval"]["meg / brainmagick"]
    assert not tiny["baselines"] and "meg / ridge" not in tiny["speech"]
    assert "evaluation.max_memory_gb = 1e-05" in tiny["meta"]["skipped"]["ridge baseline"]
    note = tiny["retrieval"]["meg / brainmagick"]["note"]
    assert f"on 10 of {len(test_set)} test items" in note and "raise it" in note
    assert sum(tiny["retrieval"]["meg / brainmagick"]["metrics"]["n_items"].values()) == 10
    # The report says so too.
    from neurodec.report import write_report

    markdown = write_report(tmp_path / "tiny-report", tiny, title="tiny", figures=False).markdown.read_text()
    assert "Not computed: ridge baseline: " in markdown and f"on 10 of {len(test_set)} test items" in markdown
