"""Speech segments (neurodec.io.speech): ids, held-out blocks, boundary drops, events, and
segment targets cut from their sounds (neurodec.targets), checked against hand-worked cases
and direct computations on the sound samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import wavfile

from neurodec.errors import ConfigError, EventError, InputFileError, TargetError
from neurodec.io.speech import (
    SoundFile,
    make_segments,
    read_sound_file,
    segment_id,
    sound_content,
    word_events,
)
from neurodec.store import RecordingData, StoreWriter, event_table, open_store

RATE = 16000


def regular_words(sounds, step=0.4, first=0.3, vocabulary=("ba", "do", "ki", "mu")):
    words = {"sound": [], "onset": [], "word": []}
    for sound in sounds:
        for i, onset in enumerate(np.arange(first, sound.duration - 0.01, step)):
            words["sound"].append(sound.id)
            words["onset"].append(round(float(onset), 3))
            words["word"].append(vocabulary[i % len(vocabulary)])
    return words


def write_speech_store(path, segments, samples, sfreq=100.0, n_times=None, recording_onsets=None):
    """A store with the sounds kept inside it and one continuous recording that heard every word."""
    placed, array = sound_content(list(segments.sounds.values()), samples)
    segments.sounds = {s.id: s for s in placed}
    sound = segments.sound.tolist()
    onset = segments.onset.tolist()
    in_recording = np.asarray(onset) + 1.0 if recording_onsets is None else recording_onsets
    events = word_events(segments, sound, onset, in_recording, sfreq)
    n_times = n_times or int(np.ceil((max(in_recording) + 4.0) * sfreq))
    data = np.random.default_rng(0).standard_normal((3, n_times)).astype(np.float32)
    recording = RecordingData(
        subject="01", modality="meg", layout="continuous", data=data, sfreq=sfreq,
        events=event_table(stimulus_id=np.asarray(events.trial_type, dtype=str), sample=events.sample,
                           onset=events.onset, value=events.value),
        ch_names=["m1", "m2", "m3"], ch_types=["mag"] * 3, units=["T"] * 3,
    )
    with StoreWriter(path, name="speech test") as writer:
        writer.set_stimuli(segments.stimulus_table(), content={"sounds": array})
        writer.add_recording(recording)
    return open_store(path)


# ------------------------------------------------------------------------ segments
def test_segment_ids_metadata_and_one_segment_per_sound_and_onset():
    sounds = [SoundFile("lw1_0", RATE, RATE * 30)]
    words = {"sound": ["lw1_0"] * 4, "onset": [12.3456, 1.0, 12.3456, 25.0], "word": ["cat", "the", "cat", "sat"]}
    segments = make_segments(words, sounds, block_duration=10.0, test_fraction=0.25, seed=0)
    # Sorted by sound and onset; the repeated (sound, onset) of a second listener is one segment.
    assert segments.ids.tolist() == ["lw1_0@1.000s", "lw1_0@12.346s", "lw1_0@25.000s"]
    assert segment_id("lw1_0", 12.3456) == "lw1_0@12.346s"
    table = segments.stimulus_table()
    metadata = [json.loads(m) for m in table["metadata"].tolist()]
    assert metadata[1]["start"] == pytest.approx(12.346 - 0.5) and metadata[1]["stop"] == pytest.approx(12.346 + 2.5)
    assert [m["word"] for m in metadata] == ["the", "cat", "sat"] == table["category"].tolist()
    assert [m["block"] for m in metadata] == ["lw1_0#0", "lw1_0#1", "lw1_0#2"]
    assert segments.split.tolist().count("test") == 1 and segments.dropped["crosses a split boundary"] == 0
    assert set(table["kind"].tolist()) == {"audio"}


def test_blocks_go_to_one_split_and_windows_never_cross_a_split_boundary():
    sounds = [SoundFile(f"story{i}", RATE, RATE * 100) for i in range(3)]
    segments = make_segments(regular_words(sounds), sounds, block_duration=20.0, test_fraction=0.2, seed=3)
    blocks = {}
    for block, split in zip(segments.block.tolist(), segments.split.tolist()):
        assert blocks.setdefault(block, split) == split  # a block is wholly train or wholly test
    assert sum(split == "test" for split in blocks.values()) == 3  # round(0.2 * 15 blocks)

    # Independent check on a 10 ms grid: every instant a window covers (sound and brain, shift
    # included) lies in a block of the window's own split; every dropped onset violates this.
    split_of_block = {}
    for sound in sounds:
        for b in range(5):
            key = f"{sound.id}#{b}"
            split_of_block[key] = blocks.get(key)
    kept = set(zip(segments.sound.tolist(), segments.onset.tolist()))
    words = regular_words(sounds)
    all_splits = {}
    for s, o in zip(words["sound"], words["onset"]):
        all_splits[(s, o)] = split_of_block[f"{s}#{int(o // 20)}"]
    for (s, o), own in all_splits.items():
        grid = np.arange(o - 0.5, o + 2.65 + 1e-9, 0.01)
        grid = grid[(grid >= 0) & (grid < 100)]
        others = {split_of_block[f"{s}#{int(t // 20)}"] for t in grid} - {own}
        # A block without any word keeps no split; treat it as the split's own.
        others.discard(None)
        assert ((s, o) in kept) == (not others), (s, o, own, others)
    assert segments.dropped["crosses a split boundary"] == len(all_splits) - len(kept) > 0


def test_segment_errors_name_the_problem():
    sounds = [SoundFile("a", RATE, RATE * 10)]
    with pytest.raises(EventError, match="outside their sound.*'late' at 11.0 s in 'a'"):
        make_segments({"sound": ["a"], "onset": [11.0], "word": ["late"]}, sounds)
    with pytest.raises(EventError, match="two different words at one onset"):
        make_segments({"sound": ["a", "a"], "onset": [1.0, 1.0], "word": ["x", "y"]}, sounds)
    with pytest.raises(EventError, match="not described: \\['b'\\]"):
        make_segments({"sound": ["b"], "onset": [1.0], "word": ["x"]}, sounds)
    with pytest.raises(ConfigError, match="cannot give both"):
        make_segments({"sound": ["a"], "onset": [1.0], "word": ["x"]}, sounds, block_duration=20.0)
    with pytest.raises(InputFileError, match="does not exist"):
        read_sound_file("/nonexistent/lw1_0.wav")


def test_word_events_samples_and_dropped_words():
    sounds = [SoundFile("s", RATE, RATE * 60)]
    words = regular_words(sounds, step=1.0)
    segments = make_segments(words, sounds, block_duration=10.0, test_fraction=0.2, seed=0)
    in_recording = np.asarray(words["onset"]) + 3.21
    events = word_events(segments, words["sound"], words["onset"], in_recording, 120.0)
    kept = np.isin([segment_id(s, o) for s, o in zip(words["sound"], words["onset"])], segments.ids)
    assert len(events) == kept.sum() < len(words["onset"])
    np.testing.assert_array_equal(events.sample, np.round(in_recording[kept] * 120.0).astype(np.int64))
    assert events.value.tolist() == np.asarray(words["word"])[kept].tolist()


# ------------------------------------------------------------------ segment targets
def test_mel_targets_of_segments_are_the_spans_of_their_sounds(tmp_path):
    from neurodec.targets import Waveform, embed_stimuli, get_extractor

    sounds = [SoundFile("s0", RATE, RATE * 30), SoundFile("s1", RATE, RATE * 30)]
    rng = np.random.default_rng(0)
    samples = {s.id: (0.1 * rng.standard_normal(s.n_samples)).astype(np.float32) for s in sounds}
    segments = make_segments(regular_words(sounds, step=1.1, first=0.2), sounds, block_duration=10.0, seed=1)
    study = write_speech_store(tmp_path / "speech.zarr", segments, samples)
    embed_stimuli(study.url, "mel", {"rate": 100.0, "n_mels": 16, "duration": 3.0}, key="mel")
    ids, embeddings = open_store(study.url).targets("mel")
    assert embeddings.shape == (len(segments), 16, 300)

    mel = get_extractor("mel", rate=100.0, n_mels=16, duration=3.0)
    first = ids.tolist().index("s0@0.200s")  # starts 0.3 s before its sound: zero-padded
    expected_first = np.concatenate([np.zeros(int(0.3 * RATE), np.float32), samples["s0"][: int(2.7 * RATE)]])
    later = ids.tolist().index("s1@5.700s")
    expected_later = samples["s1"][int(5.2 * RATE): int(8.2 * RATE)]
    direct = mel.embed([Waveform(expected_first, RATE), Waveform(expected_later, RATE)])
    np.testing.assert_allclose(embeddings[first], direct[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embeddings[later], direct[1], rtol=1e-5, atol=1e-5)


def test_segments_read_from_wav_files_and_bad_sounds_are_refused(tmp_path):
    from neurodec.targets import embed_stimuli
    from neurodec.targets.cache import StoredStimuli

    samples = (np.random.default_rng(2).standard_normal(RATE * 30) * 3000).astype(np.int16)
    path = tmp_path / "story.wav"
    wavfile.write(path, RATE, samples)
    sound = read_sound_file(path)
    assert (sound.id, sound.sample_rate, sound.n_samples) == ("story", RATE, RATE * 30)
    segments = make_segments(regular_words([sound], step=1.3), [sound], block_duration=10.0, seed=0)
    n_times = int(40 * 100)
    study_path = tmp_path / "speech.zarr"
    events = word_events(segments, segments.sound, segments.onset, segments.onset + 1.0, 100.0)
    recording = RecordingData(
        subject="01", modality="eeg", layout="continuous", sfreq=100.0,
        data=np.zeros((2, n_times), np.float32), ch_names=["a", "b"], ch_types=["eeg"] * 2, units=["V"] * 2,
        events=event_table(stimulus_id=np.asarray(events.trial_type, dtype=str), sample=events.sample),
    )
    with StoreWriter(study_path) as writer:
        writer.set_stimuli(segments.stimulus_table())
        writer.add_recording(recording)
    study = open_store(study_path)
    segment = segments.ids[3]
    waveform = StoredStimuli(study, [segment], "audio")[0]
    start = int(round((segments.onset[3] - 0.5) * RATE))
    np.testing.assert_allclose(waveform.samples, samples[start: start + 3 * RATE] / 32768.0, atol=1e-7)

    # The same file name holding a sound at another rate: refused, naming both rates.
    wavfile.write(path, 8000, samples[: 8000 * 30])
    with pytest.raises(TargetError, match="8000 Hz, but the store recorded 16000 Hz"):
        StoredStimuli(study, [segment], "audio")[0]
    # A missing sound: refused before any embedding, naming the file.
    path.unlink()
    with pytest.raises(TargetError, match="story.wav does not exist"):
        embed_stimuli(study.url, "mel", {"duration": 3.0})


def test_wav2vec2_targets_of_segments_match_the_model_on_the_cut_sound(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from neurodec.targets import Waveform, embed_stimuli, get_extractor

    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True, feat_extract_norm="layer",
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).eval().save_pretrained(tmp_path / "wav2vec2")
    sounds = [SoundFile("s", RATE, RATE * 25)]
    samples = {"s": np.random.default_rng(4).standard_normal(RATE * 25).astype(np.float32)}
    segments = make_segments(regular_words(sounds, step=2.3), sounds, block_duration=8.0, seed=0)
    study = write_speech_store(tmp_path / "speech.zarr", segments, samples)
    options = {"model": str(tmp_path / "wav2vec2"), "layers": [1, 2], "rate": 120.0, "duration": 3.0}
    embed_stimuli(study.url, "wav2vec2", options, key="w2v")
    ids, embeddings = open_store(study.url).targets("w2v")
    assert embeddings.shape == (len(segments), 16, 360)  # 3 s at 120 Hz, as Défossez et al.
    row = 2
    onset = segments.onset[segments.ids.tolist().index(ids[row])]
    start = int(round((onset - 0.5) * RATE))
    direct = get_extractor("wav2vec2", **options).embed([Waveform(samples["s"][start: start + 3 * RATE], RATE)])
    np.testing.assert_allclose(embeddings[row], direct[0], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------- validation
def test_validation_blocks_are_whole_and_windows_line_up(tmp_path):
    from neurodec.data import WindowDataset, split_stimuli

    sounds = [SoundFile(f"s{i}", RATE, RATE * 60) for i in range(2)]
    rng = np.random.default_rng(0)
    samples = {s.id: rng.standard_normal(s.n_samples).astype(np.float32) for s in sounds}
    segments = make_segments(regular_words(sounds, step=0.5), sounds, block_duration=10.0, seed=0)
    study = write_speech_store(tmp_path / "speech.zarr", segments, samples)
    splits = split_stimuli(study, val_fraction=0.2, seed=0, val_groups="block")
    block_of = dict(zip(segments.ids.tolist(), segments.block.tolist()))
    val_blocks = {block_of[s] for s in splits.val}
    assert val_blocks and not val_blocks & {block_of[s] for s in splits.train}
    assert not {block_of[s] for s in splits.test} & ({block_of[s] for s in splits.train} | val_blocks)
    assert set(splits.test) == set(segments.ids[segments.split == "test"])

    # A window at 100 Hz starts at round((onset + 1.0 - 0.5 + 0.15) * 100) of the recording.
    windows = WindowDataset(study, tmin=-0.5, tmax=2.5, shift=0.15, stimuli=splits.test)
    data = study.recording(subject="01").data[:]
    item = windows[0]
    onset = segments.onset[segments.ids.tolist().index(item["stimulus_id"])]
    start = int(round((onset + 1.0) * 100)) + int(round(-0.35 * 100))
    np.testing.assert_array_equal(item["brain"].numpy(), data[:, start: start + 300])
    with pytest.raises(ConfigError, match="no metadata field 'scene'"):
        split_stimuli(study, val_fraction=0.2, val_groups="scene")


# ------------------------------------------------- recordings written by write_speech_store
def _listening_recording(subject, played, seconds, *, seed=0, on_read=None):
    """A SpeechRecording of 2 EEG channels at 100 Hz that heard ``played``: (sound, onset of the
    sound in the recording, [onsets of words in the sound]); its raw is made when read."""
    from neurodec.io.recipes._speech import HeardWords, SpeechRecording

    words = HeardWords()
    for sound, start, onsets in played:
        for onset in onsets:
            words.add(sound, onset, start + onset, f"{sound}{onset:g}", origin=f"{sound} word at {onset:g} s",
                      metadata={"story": {"a": "alpha", "b": "beta"}[sound]})

    def read_raw():
        import mne

        info = mne.create_info(["c1", "c2"], 100.0, "eeg")
        raw = mne.io.RawArray(np.random.default_rng(seed).standard_normal((2, int(seconds * 100))) * 1e-6, info,
                              verbose="error")
        if on_read is not None:
            on_read(subject, raw)
        return raw

    return SpeechRecording(subject=subject, session="01", run="01", task="listen", words=words, read_raw=read_raw)


BACK_TO_BACK_WORDS = {"a": [0.5, 2.0, 5.0, 7.0, 8.5, 9.5], "b": [0.2, 1.0, 2.5, 6.0]}


def test_recording_time_leakage_drops_both_windows_of_back_to_back_sounds(tmp_path):
    """Hand-worked: sounds a (train) and b (test), 10 s each, one 10 s block each, so no window
    crosses a block boundary in sound time. Subject 01 hears b right after a (a from 1 s, b
    from 11 s); subject 02 hears b first and a 10 s after b ends.

    Brain windows are [r - 0.35, r + 2.65) around each word's onset r in the recording, so two
    windows overlap when their onsets are less than 3 s apart. Subject 01's onsets: a at 1.5,
    3, 6, 8, 9.5, 10.5 s; b at 11.2, 12, 13.5, 17 s. Pairs of a and b closer than 3 s: 9.5-11.2,
    9.5-12, 10.5-11.2, 10.5-12; 8 and 11.2 are 3.2 s apart, 10.5 and 13.5 exactly 3 s (windows
    touching, kept). Dropped: a@8.500s, a@9.500s, b@0.200s, b@1.000s. Subject 02: none."""
    import gc
    import weakref

    from neurodec.data import WindowDataset
    from neurodec.io.recipes._speech import write_speech_store as write_store

    sounds = [SoundFile("a", RATE, RATE * 10), SoundFile("b", RATE, RATE * 10)]
    out = tmp_path / "speech.zarr"
    read = []

    def on_read(subject, raw):
        # Streaming: the previous recording is written and its raw released before the next is read.
        gc.collect()
        assert [ref() for _, ref in read] == [None] * len(read), f"{[s for s, _ in read]} still in memory"
        assert not out.exists()
        read.append((subject, weakref.ref(raw)))

    recordings = [
        _listening_recording("01", [("a", 1.0, BACK_TO_BACK_WORDS["a"]), ("b", 11.0, BACK_TO_BACK_WORDS["b"])], 22.0,
                             on_read=on_read),
        _listening_recording("02", [("b", 1.0, BACK_TO_BACK_WORDS["b"]), ("a", 21.0, BACK_TO_BACK_WORDS["a"])], 35.0,
                             seed=1, on_read=on_read),
    ]
    study = write_store(out, recordings, sounds, converter="leakage test", segment_options={
        "block_duration": 10.0, "test_fraction": 0.5, "seed": 3}, options={"preprocessing": {}})
    assert [subject for subject, _ in read] == ["01", "02"]
    split = dict(zip(study.stimuli["id"].tolist(), study.stimuli["split"].tolist()))
    assert {s[0]: p for s, p in split.items()} == {"a": "train", "b": "test"}  # seed 3 holds out b
    assert len(split) == 10 and study.provenance["parameters"]["segments"]["dropped"]["crosses a split boundary"] == 0

    first = study.recording("sub-01/ses-01/run-01")
    assert sorted(first.events["stimulus_id"].tolist()) == [
        "a@0.500s", "a@2.000s", "a@5.000s", "a@7.000s", "b@2.500s", "b@6.000s"]
    assert first.events["sample"].tolist() == [150, 300, 600, 800, 1350, 1700]
    second = study.recording("sub-02/ses-01/run-01")
    assert sorted(second.events["stimulus_id"].tolist()) == sorted(split)
    assert first.attrs["info"]["words_overlapping_other_split"] == 4
    assert second.attrs["info"]["words_overlapping_other_split"] == 0
    assert first.attrs["info"]["words_outside_recording"] == second.attrs["info"]["words_outside_recording"] == 0
    parameters = study.provenance["parameters"]
    assert parameters["words_overlapping_dropped"] == 4 and parameters["words_dropped_by_recording"] == {
        "sub-01/ses-01/run-01": {"words_outside_recording": 0, "words_overlapping_other_split": 4}}

    # Independently, on the windows as WindowDataset cuts them (100 Hz: from sample - 35, 300
    # samples): no training window shares a sample with a test window of the same recording.
    windows = WindowDataset(study, tmin=-0.5, tmax=2.5, shift=0.15)
    samples = {}
    for (key, row), stimulus in zip(windows.trial_events, windows.stimulus_ids):
        start = int(study.recording(key).events["sample"][row]) - 35
        samples.setdefault((key, split[stimulus]), set()).update(range(start, start + windows.n_times))
    assert windows.n_times == 300 and len(windows) == 16
    for key in study.recording_keys:
        assert not samples[(key, "train")] & samples[(key, "test")]
    # The words' metadata lands in each segment's.
    stories = {row["sound"]: row["story"] for row in map(json.loads, study.stimuli["metadata"].tolist())}
    assert stories == {"a": "alpha", "b": "beta"}


def test_write_speech_store_refuses_words_outside_and_leaves_nothing_on_error(tmp_path):
    from neurodec.io.recipes._speech import HeardWords, write_speech_store as write_store

    sounds = [SoundFile("a", RATE, RATE * 10), SoundFile("b", RATE, RATE * 10)]
    options = {"segment_options": {"block_duration": 10.0, "test_fraction": 0.5, "seed": 3},
               "options": {"preprocessing": {}}}
    # Subject 02 hears b from 8 s and the recording stops at 12 s: b's word at 4.2 s (12.2 s in
    # the recording) lies outside; those at 1.5 and 2 s (9.5 and 10 s) have brain windows to
    # 12.15 and 12.65 s, past the end; those at 0.2 and 1 s (windows to 10.85 and 11.65 s) stay.
    recordings = [_listening_recording("01", [("a", 1.0, BACK_TO_BACK_WORDS["a"]),
                                              ("b", 25.0, BACK_TO_BACK_WORDS["b"])], 40.0),
                  _listening_recording("02", [("b", 8.0, [0.2, 1.0, 1.5, 2.0, 4.2])], 12.0)]
    with pytest.raises(EventError, match=r"sub-02 ses-01 run-01: 1 of 5 word onsets fall outside the recording "
                                         r"\(0 to 12 s\) and 2 more .* e\.g\. b word at 4.2 s: word 'b4.2' of 'b' at "
                                         r"12.2 s lies outside"):
        write_store(tmp_path / "error.zarr", recordings, sounds, converter="outside test", on_outside="error",
                    **options)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # the first recording's data went too
    study = write_store(tmp_path / "drop.zarr", recordings, sounds, converter="outside test", **options)  # drop
    stored = study.recording("sub-02/ses-01/run-01")
    assert stored.attrs["info"]["words_outside_recording"] == 3
    assert stored.events["stimulus_id"].tolist() == ["b@0.200s", "b@1.000s"]
    assert study.provenance["parameters"]["words_outside_dropped"] == 3

    # A duration known from the file's header: refused before any recording is read.
    read = []
    early = [_listening_recording(r.subject, played, seconds, on_read=lambda subject, raw: read.append(subject))
             for r, (played, seconds) in zip(recordings, [([("a", 1.0, [0.5])], 40.0),
                                                          ([("b", 8.0, [0.2, 4.2])], 12.0)])]
    early[1].duration = 12.0
    with pytest.raises(EventError, match=r"sub-02 ses-01 run-01: 1 of 2 word onsets fall outside"):
        write_store(tmp_path / "early.zarr", early, sounds, converter="outside test", on_outside="error", **options)
    assert read == [] and not (tmp_path / "early.zarr").exists()

    with pytest.raises(ConfigError, match="same metadata fields"):
        recordings[0].words.add("a", 2.0, 2.0, "y")  # its other words name their story
    with pytest.raises(ConfigError, match="a segment's own fields"):
        HeardWords().add("a", 2.0, 2.0, "y", metadata={"block": 3})
    with pytest.raises(ConfigError, match=r"on_outside: expected one of \['error', 'drop'\]"):
        write_store(tmp_path / "x.zarr", recordings, sounds, converter="outside test", on_outside="raise")


def test_words_near_the_recording_edges_are_dropped_and_onsets_outside_are_errors():
    from neurodec.io.recipes._speech import HeardWords, words_inside

    words = HeardWords()
    for onset in (0.2, 5.0, 9.0):
        words.add("s", onset, onset, "w")
    # Windows reaching past an edge: left out even when errors are asked for.
    assert words_inside(words, 10.0, (-0.35, 2.65), "error", "rec").tolist() == [False, True, False]
    words.add("s", 12.0, 12.0, "late")
    with pytest.raises(EventError, match="1 of 4 word onsets fall outside the recording.*'late'"):
        words_inside(words, 10.0, (-0.35, 2.65), "error", "rec")
    assert words_inside(words, 10.0, (-0.35, 2.65), "drop", "rec").tolist() == [False, True, False, False]


def test_onsets_at_half_a_millisecond_find_their_segment():
    # np.round rounds half to even, string formatting by the binary value: ids must be made and
    # looked up by one rounding, or a recording's word silently loses its segment.
    sounds = [SoundFile("s", RATE, RATE * 90)]
    onsets = [1.0005, 5.0025, 40.0055, 70.2, 80.0125]
    words = {"sound": ["s"] * 5, "onset": onsets, "word": ["a", "b", "c", "d", "e"]}
    segments = make_segments(words, sounds, block_duration=30.0, test_fraction=0.3, seed=0, shift=0.0)
    assert segments.lookup(words["sound"], onsets).tolist() == segments.ids.tolist()
    events = word_events(segments, words["sound"], onsets, np.asarray(onsets) + 2.0, 1000.0)
    assert len(events) == len(segments) == 5


@pytest.mark.parametrize("kind", ["int24", "float32"])
def test_sound_files_of_any_sample_format_are_described(tmp_path, kind):
    import wave

    from neurodec.targets.base import load_waveform

    n, rate = 4410, 44100
    path = tmp_path / f"{kind}.wav"
    if kind == "float32":
        wavfile.write(path, rate, np.linspace(-0.5, 0.5, n, dtype=np.float32))
    else:  # 24-bit PCM (scipy writes no 24-bit files; the standard library does)
        values = np.round(np.linspace(-0.5, 0.5, n) * (2 ** 23 - 1)).astype("<i4")
        packed = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1), out.setsampwidth(3), out.setframerate(rate), out.writeframes(packed)
    sound = read_sound_file(path)
    read_back = load_waveform(path)  # what the extractors read
    assert (sound.sample_rate, sound.n_samples) == (rate, n) == (read_back.sample_rate, len(read_back.samples))
    with pytest.raises(InputFileError, match="not a readable WAV file"):
        (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
        read_sound_file(tmp_path / "broken.wav")
