"""The MEG speech recipes (neurodec.io.recipes: meg-masc, schoffelen-mous) on small replicas
of each study's published layout, filled with synthetic signals.

MEG-MASC replica (Gwilliams et al. 2023, Scientific Data 10:862; OSF ag3kj; brainmagick's
``gwilliams2022.py`` reads the same layout): a BIDS root with ``dataset_description.json``
and ``participants.tsv`` (written by mne-bids), ``sub-01/ses-0/meg/sub-01_ses-0_task-{0,1}_meg.con``
and ``sub-02/ses-0/meg/sub-02_ses-0_task-0_meg.con`` with their mne-bids sidecars
(``channels.tsv``, ``meg.json``, ``coordsystem.json``, ``scans.tsv``), an ``events.tsv`` per
recording with the published columns ``onset duration trial_type value sample`` and, in
``trial_type``, the published dict literal (``kind`` 'sound' / 'word' / 'phoneme', ``story``,
``story_uid``, ``sound_id``, ``sound``, ``start`` = onset in the sound, ``word``,
``sequence_id``, ``condition``, ``word_index``, ``phoneme``), and the sounds in
``stimuli/audio/*.wav``. The published quirks are kept: ``sound`` names
``stimuli/audio/lw1_0.0.wav`` for ``lw1_0.wav`` and ``The_Black_Willow_0.0.wav`` for
``the_black_willow_0.wav``; sub-02's word dicts carry no ``start`` (the recipe then places
words from the ``sound`` rows). Each ``.con`` is the real KIT file of MNE's test data
(157 axial gradiometers, 1000 Hz; MEG-MASC's system has 208) with its data section made
24 s long and filled with synthetic samples: a Gaussian bump on ``MEG 001`` at every word
onset. Sounds are synthetic 16 kHz float32 wavs of 8 s.

MOUS replica (Schoffelen et al. 2019, Scientific Data 6:17; Donders DSC_3011020.09_236):
``sub-A2002`` and ``sub-A2003`` with ``meg/sub-A200X_task-auditory_meg.fif`` (DEVIATION: the
release holds CTF ``.ds`` folders, which MNE cannot write; the FIF keeps the sensor
definitions, reference channels and compensation of a real CTF recording, MNE's
``somMDYO-18av.ds_raw.fif``, at MOUS's 1200 Hz) and an ``events.tsv`` with the columns
``onset duration sample type value``: a ``Sound`` row ``Start File 00N.wav`` starting each
sentence, a ``Nothing`` row ``Audio onset`` when the audio starts (25 ms later; sub-A2003's
events have none, so its ``Start File`` rows carry the onsets), a ``Nothing`` row ``End of
file`` and trigger rows (``UPPT001``) that are not sounds;
``stimuli/audio_files/EQ_Ramp_Int2_Int1LPF00N.wav``, ``stimuli/stimuli.txt`` (``N text``
per line), and the word alignments brainmagick uses, Praat TextGrids with an ``ORT-MAU``
word tier in ``derivatives/phonemes/EQ_Ramp_Int2_Int1LPF00N.TextGrid`` (the release has no
word onsets: brainmagick distributes these forced alignments separately). The type and value
of the audio-onset row are the least certain part of this layout (read from brainmagick's
parsing of the stimulus logs); the recipe falls back to the ``Start File`` row, as documented.

Every check compares the store with an independent computation: the onsets written into the
replica and MNE's own reading and resampling of the same files.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from neurodec.errors import EventError, InputFileError

SFREQ_OUT = 120.0
TMIN, TMAX, SHIFT = -0.5, 2.5, 0.15
# Window start relative to the onset, in samples at 120 Hz: round((-0.5 + 0.15) * 120) = -42.
WINDOW_OFFSET = -42
WINDOW_LENGTH = 360
SOUND_RATE = 16000
VOCABULARY = ("tara", "stood", "stock", "still", "the", "fox", "ran", "away", "and", "then", "a", "hen",
              "sang", "to", "her", "chicks")


@dataclass
class Word:
    sound: str          # sound id (the wav file's stem on disk)
    start: float        # onset in the sound, s
    onset: float        # onset in the recording, s
    word: str


@dataclass
class ReplicaRecording:
    key: str
    path: Path          # the MEG data file
    events: Path
    words: list[Word] = field(default_factory=list)


@dataclass
class Replica:
    root: Path
    recordings: dict[str, ReplicaRecording]
    sounds: dict[str, np.ndarray]   # sound id -> float32 samples
    sound_files: dict[str, Path]


def _write_sound(path: Path, seed: int, seconds: float = 8.0) -> np.ndarray:
    samples = (np.random.default_rng(seed).standard_normal(int(seconds * SOUND_RATE)) * 0.1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, SOUND_RATE, samples)
    return samples


def _bumps(n_times: int, sfreq: float, onsets: list[float], sd: float = 0.006) -> np.ndarray:
    """A Gaussian bump at every onset: after resampling to 120 Hz its peak stays at the onset's sample."""
    times = np.arange(n_times) / sfreq
    signal = np.zeros(n_times)
    for onset in onsets:
        near = np.abs(times - onset) < 6 * sd
        signal[near] += np.exp(-0.5 * ((times[near] - onset) / sd) ** 2)
    return signal


# ---------------------------------------------------------------- the MEG-MASC replica
def _long_kit_file(source: Path, destination: Path, samples: np.ndarray) -> None:
    """A copy of a real KIT ``.con`` whose raw-data section holds ``samples`` (times x channels, int16).

    The KIT file is a directory of sections (16-byte entries: offset, size, max count, count);
    the raw data is one section. The copy puts the new samples there, moves the sections that
    follow it, and updates the sample counts in the data directory entry and in the
    acquisition section, where MNE's reader (``mne.io.kit.kit.get_kit_info``) finds them.
    """
    from mne.io.kit.constants import KIT
    from mne.io.kit.kit import get_kit_info

    _, sqd = get_kit_info(str(source), False, verbose="error")
    blob = source.read_bytes()
    directory = sqd["dirs"]
    begin = int(directory[KIT.DIR_INDEX_RAW_DATA]["offset"])
    end = begin + int(directory[KIT.DIR_INDEX_RAW_DATA]["size"]) * int(directory[KIT.DIR_INDEX_RAW_DATA]["count"])
    assert samples.shape[1] == sqd["nchan"] and sqd["dtype"] == np.dtype("<i2")
    data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
    moved = len(data) - (end - begin)
    out = bytearray(blob[:begin]) + data + bytearray(blob[end:])
    for index, entry in enumerate(directory):
        if int(entry["offset"]) >= end:
            struct.pack_into("<I", out, 16 * index, int(entry["offset"]) + moved)
    struct.pack_into("<ii", out, 16 * KIT.DIR_INDEX_RAW_DATA + 8, samples.size, samples.size)
    # Acquisition section: type (int32), rate (float64), an int32, then the sample count.
    struct.pack_into("<i", out, int(directory[KIT.DIR_INDEX_ACQ_COND]["offset"]) + 16, samples.shape[0])
    destination.write_bytes(bytes(out))


MASC_RECORDINGS = {
    # key: (subject, task, story, story_uid, [(sound file name in the events, sound id, onset in recording)], start key)
    "sub-01/ses-0/run-0": ("01", "0", "lw1", 0.0, [("lw1_0.0.wav", "lw1_0", 2.0), ("lw1_1.0.wav", "lw1_1", 12.0)], True),
    "sub-01/ses-0/run-1": ("01", "1", "The_Black_Willow", 3.0, [("The_Black_Willow_0.0.wav", "the_black_willow_0", 3.0)],
                           True),
    "sub-02/ses-0/run-0": ("02", "0", "lw1", 0.0, [("lw1_0.0.wav", "lw1_0", 1.5), ("lw1_1.0.wav", "lw1_1", 11.0)], False),
}
MASC_DURATION = 24.0
MASC_BLOCK = 4.0
# Word onsets in each sound: every 0.45 s from 0.3 s, all multiples of 1/40 s, so each onset
# in the recording (sound onsets are multiples of 0.5 s) falls exactly on a 1000 Hz and a 120 Hz sample.
MASC_STARTS = [round(0.3 + 0.45 * k, 3) for k in range(16)]


def masc_events_rows(story, story_uid, sounds, with_start):
    rows, words = [], []
    for sound_index, (name, sound_id, sound_onset) in enumerate(sounds):
        common = {"story": story, "story_uid": story_uid, "sound_id": float(sound_index),
                  "sound": f"stimuli/audio/{name}"}
        rows.append((sound_onset, 0.0, {**common, "kind": "sound", "start": 0.0}))
        for k, start in enumerate(MASC_STARTS):
            onset = round(sound_onset + start, 3)
            word = VOCABULARY[(k + 3 * sound_index) % len(VOCABULARY)]
            described = {**common, "kind": "word", "word": word, "sequence_id": float(k // 4),
                         "condition": "sentence", "word_index": float(k % 4)}
            if with_start:
                described["start"] = start
            rows.append((onset, 0.3, described))
            phoneme = {**common, "kind": "phoneme", "phoneme": f"{word[0]}_B", "sequence_id": float(k // 4),
                       "condition": "sentence", "word_index": float(k % 4)}
            if with_start:
                phoneme["start"] = start
            rows.append((onset, 0.08, phoneme))
            words.append(Word(sound_id, start, onset, word))
    return rows, words


def write_events_tsv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_masc_replica(root: Path, kit_source: Path) -> Replica:
    import mne
    import mne_bids

    sounds, files = {}, {}
    for seed, name in enumerate(("lw1_0", "lw1_1", "the_black_willow_0")):
        files[name] = root / "stimuli" / "audio" / f"{name}.wav"
        sounds[name] = _write_sound(files[name], seed)
    recordings = {}
    rng = np.random.default_rng(7)
    for key, (subject, task, story, story_uid, placed, with_start) in MASC_RECORDINGS.items():
        rows, words = masc_events_rows(story, story_uid, placed, with_start)
        n_times = int(MASC_DURATION * 1000)
        samples = rng.integers(-20, 21, size=(n_times, 256)).astype(np.int16)
        samples[:, 0] += np.round(3000 * _bumps(n_times, 1000.0, [w.onset for w in words])).astype(np.int16)
        scratch = root.parent / f"scratch_{subject}_{task}.con"
        _long_kit_file(kit_source, scratch, samples)
        raw = mne.io.read_raw_kit(scratch, verbose="error")
        raw.info["line_freq"] = 60.0
        bids_path = mne_bids.BIDSPath(subject=subject, session="0", task=task, datatype="meg", root=root)
        mne_bids.write_raw_bids(raw, bids_path, overwrite=True, verbose="error")
        scratch.unlink()
        events = bids_path.copy().update(suffix="events", extension=".tsv")
        write_events_tsv(Path(events.fpath), ("onset", "duration", "trial_type", "value", "sample"),
                         [(repr(onset), duration, repr(described), 1, int(round(onset * 1000)))
                          for onset, duration, described in rows])
        recordings[key] = ReplicaRecording(key, Path(bids_path.fpath), Path(events.fpath), words)
    return Replica(root, recordings, sounds, files)


@pytest.fixture(scope="module")
def masc(tmp_path_factory, real_data):
    root = tmp_path_factory.mktemp("meg-masc") / "bids"
    replica = build_masc_replica(root, real_data / "kit" / "test_as-raw.con")
    from neurodec.io.recipes import convert

    study = convert("meg-masc", root, root.parent / "meg-masc.zarr", tmin=TMIN, tmax=TMAX, shift=SHIFT,
                    block_duration=MASC_BLOCK, test_fraction=1 / 3, seed=3)
    return replica, study


def _segment_table(study):
    stimuli = study.stimuli
    metadata = [json.loads(m) for m in stimuli["metadata"].tolist()]
    return {sid: {"word": w, "split": s, "uri": u, **m} for sid, w, s, u, m in
            zip(stimuli["id"].tolist(), stimuli["category"].tolist(), stimuli["split"].tolist(),
                stimuli["uri"].tolist(), metadata)}


def check_segments_follow_the_words(replica: Replica, study, block: float) -> dict[str, dict]:
    """Segment ids, words, blocks and uris from the replica's words; the split boundary rule
    checked on the store's own block draw; returns the segment table."""
    segments = _segment_table(study)
    heard = {}
    for recording in replica.recordings.values():
        for w in recording.words:
            heard[f"{w.sound}@{w.start:.3f}s"] = w
    assert set(segments) <= set(heard)
    split_of_block = {}
    for sid, segment in segments.items():
        w = heard[sid]
        assert segment["word"] == w.word and segment["sound"] == w.sound
        assert segment["onset"] == pytest.approx(w.start)
        assert segment["block"] == f"{w.sound}#{int(w.start // block)}"
        assert (segment["start"], segment["stop"]) == pytest.approx((w.start + TMIN, w.start + TMAX))
        assert segment["uri"] == str(replica.sound_files[w.sound].resolve())
        assert segment["sample_rate"] == SOUND_RATE and segment["n_samples"] == len(replica.sounds[w.sound])
        assert split_of_block.setdefault(segment["block"], segment["split"]) == segment["split"]
    assert set(split_of_block.values()) == {"train", "test"}
    # A word is a segment exactly when its window (sound and shifted brain) stays in blocks of its split.
    for sid, w in heard.items():
        n_blocks = int(np.ceil(len(replica.sounds[w.sound]) / SOUND_RATE / block))
        first = int(np.floor((w.start + TMIN) / block))
        last = int(np.ceil((w.start + TMAX + SHIFT) / block)) - 1
        reached = {split_of_block.get(f"{w.sound}#{b}") for b in range(max(first, 0), min(last, n_blocks - 1) + 1)}
        own = split_of_block.get(f"{w.sound}#{int(w.start // block)}")
        if own is not None:
            assert (sid in segments) == (reached == {own}), sid
    return segments


def leaking_words(recording: ReplicaRecording, segments: dict[str, dict]) -> set[str]:
    """The segments of a recording whose 120 Hz brain window (from round(onset * 120) - 42, 360
    samples) shares a sample with the window of a segment of the other split."""
    windows = {}
    for w in recording.words:
        sid = f"{w.sound}@{w.start:.3f}s"
        if sid in segments:
            start = round(w.onset * SFREQ_OUT) + WINDOW_OFFSET
            windows[sid] = (start, start + WINDOW_LENGTH, segments[sid]["split"])
    return {a for a, (start, stop, split) in windows.items()
            if any(other_split != split and max(start, other_start) < min(stop, other_stop)
                   for other_start, other_stop, other_split in windows.values())}


def check_windows_line_up(replica: Replica, study, bump_channel: str) -> None:
    """Each window holds MNE's own resampled data from round(onset * 120) - 42, and the
    replica's bump at the onset sits at sample 42 of the window."""
    import mne_bids

    from neurodec.data import WindowDataset

    windows = WindowDataset(study, tmin=TMIN, tmax=TMAX, shift=SHIFT)
    assert windows.n_times == WINDOW_LENGTH
    expected_sample = {}
    for recording in replica.recordings.values():
        for w in recording.words:
            expected_sample[(recording.key, f"{w.sound}@{w.start:.3f}s")] = w.onset * SFREQ_OUT
    resampled = {}
    for key, recording in replica.recordings.items():
        bids_path = mne_bids.get_bids_path_from_fname(recording.path).update(root=replica.root)
        raw = mne_bids.read_raw_bids(bids_path, verbose="error").pick(["mag", "grad"]).load_data(verbose="error")
        resampled[key] = raw.resample(SFREQ_OUT, method="polyphase", verbose="error").get_data()
        stored = study.recording(key)
        np.testing.assert_allclose(stored.data[...], resampled[key], rtol=1e-5, atol=1e-6 * np.abs(resampled[key]).max())
        assert stored.ch_names == raw.ch_names
    checked = 0
    for index, (key, row) in enumerate(windows.trial_events):
        stimulus = windows.stimulus_ids[index]
        sample = expected_sample[(key, stimulus)]
        assert abs(sample - round(sample)) < 1e-9  # onsets sit on 120 Hz samples by construction
        assert int(study.recording(key).events["sample"][row]) == round(sample)
        brain = windows[index]["brain"].numpy()
        start = round(sample) + WINDOW_OFFSET
        np.testing.assert_allclose(brain, resampled[key][:, start: start + WINDOW_LENGTH], rtol=1e-5,
                                   atol=1e-6 * np.abs(resampled[key]).max())
        bump = brain[study.recording(key).ch_names.index(bump_channel)]
        assert bump[-WINDOW_OFFSET] > bump[-WINDOW_OFFSET - 1] and bump[-WINDOW_OFFSET] > bump[-WINDOW_OFFSET + 1]
        assert bump[-WINDOW_OFFSET] > 0.5 * bump.max()
        checked += 1
    assert checked == sum(study.recording(k).events.n_rows for k in study.recording_keys) > 20


def check_audio_spans(replica: Replica, study, segments: dict[str, dict]) -> None:
    """The stored segment reads back its span of the wav, zero-padded outside the sound."""
    from neurodec.targets.cache import StoredStimuli

    ids = sorted(segments)[:: max(1, len(segments) // 6)] + [sorted(segments)[-1]]
    waveforms = StoredStimuli(study, ids, "audio")
    for sid, waveform in zip(ids, waveforms):
        segment = segments[sid]
        _, samples = wavfile.read(replica.sound_files[segment["sound"]])
        first = int(round(segment["start"] * SOUND_RATE))
        expected = np.zeros(int(round((TMAX - TMIN) * SOUND_RATE)), np.float32)
        lo, hi = max(first, 0), min(first + len(expected), len(samples))
        expected[lo - first: hi - first] = samples[lo:hi]
        assert waveform.sample_rate == SOUND_RATE
        np.testing.assert_array_equal(waveform.samples, expected)


def test_meg_masc_segments_follow_the_events(masc):
    replica, study = masc
    segments = check_segments_follow_the_words(replica, study, MASC_BLOCK)
    # Seed 3 holds out one block of lw1_1 and one of the_black_willow_0: the words whose
    # window reaches across those boundaries are dropped (and counted), the others kept.
    heard = {f"{w.sound}@{w.start:.3f}s" for r in replica.recordings.values() for w in r.words}
    dropped = study.provenance["parameters"]["segments"]["dropped"]["crosses a split boundary"]
    assert dropped == len(heard) - len(segments) > 0
    # Both subjects heard lw1: one segment per word, shared by their events (sub-02's words
    # were placed from the 'sound' rows, without 'start'). Recording-time leakage: sub-02
    # heard lw1_1 9.5 s after lw1_0 (sub-01: 10 s), so lw1_0's last word (at 8.55 s, a training
    # block) and lw1_1's first (at 11.3 s, a test block) are 2.75 s apart; their 3 s brain
    # windows share samples, and both events are dropped from sub-02's recording only.
    events_01 = set(study.recording("sub-01/ses-0/run-0").events["stimulus_id"].tolist())
    events_02 = set(study.recording("sub-02/ses-0/run-0").events["stimulus_id"].tolist())
    assert events_01 - events_02 == {"lw1_0@7.050s", "lw1_1@0.300s"} and events_02 < events_01 <= set(segments)
    assert (segments["lw1_0@7.050s"]["split"], segments["lw1_1@0.300s"]["split"]) == ("train", "test")
    # Each recording's events: exactly its kept words, value = the word, less those whose
    # 120 Hz window shares a sample with a window of the other split.
    for key, recording in replica.recordings.items():
        leaking = leaking_words(recording, segments)
        events = study.recording(key).events
        expected = sorted((f"{w.sound}@{w.start:.3f}s", w.word) for w in recording.words
                          if f"{w.sound}@{w.start:.3f}s" in segments and f"{w.sound}@{w.start:.3f}s" not in leaking)
        assert sorted(zip(events["stimulus_id"].tolist(), events["value"].tolist())) == expected
        info = study.recording(key).attrs["info"]
        assert (info["words_outside_recording"], info["words_overlapping_other_split"]) == (0, len(leaking))
    parameters = study.provenance["parameters"]
    assert parameters["words_dropped_by_recording"] == {
        "sub-02/ses-0/run-0": {"words_outside_recording": 0, "words_overlapping_other_split": 2}}
    assert parameters["words_overlapping_dropped"] == 2 and parameters["words_outside_dropped"] == 0
    # The events' story lands in each segment's metadata.
    assert {(s["sound"], s["story"]) for s in segments.values()} == {
        ("lw1_0", "lw1"), ("lw1_1", "lw1"), ("the_black_willow_0", "The_Black_Willow")}
    # The capitalised, float-indexed names of the events found the lower-case files.
    assert {s["sound"] for s in segments.values()} == {"lw1_0", "lw1_1", "the_black_willow_0"}
    check_audio_spans(replica, study, segments)


def test_meg_masc_windows_channels_and_provenance(masc, real_data):
    import mne

    replica, study = masc
    check_windows_line_up(replica, study, "MEG 001")
    # Channels and positions: MNE's reading of the real KIT file (device -> head frame).
    kit = mne.io.read_raw_kit(real_data / "kit" / "test_as-raw.con", verbose="error").pick("mag")
    recording = study.recording("sub-01/ses-0/run-0")
    assert recording.ch_names == kit.ch_names and len(kit.ch_names) == 157
    locations = np.array([ch["loc"][:3] for ch in kit.info["chs"]])
    head = mne.transforms.apply_trans(kit.info["dev_head_t"], locations)
    np.testing.assert_allclose(recording.sensor_positions[...], head, atol=1e-7)
    assert recording.sfreq == SFREQ_OUT
    assert [step["step"] for step in recording.preprocessing] == ["resample"]
    assert (recording.preprocessing[0]["from_sfreq"], recording.preprocessing[0]["method"]) == (1000.0, "polyphase")
    provenance = study.provenance
    assert provenance["converter"] == "neurodec.io.recipes.meg_masc"
    assert provenance["parameters"]["ingest_options"]["preprocessing"]["resample"] == 120.0
    assert provenance["parameters"]["segments"]["block_duration"] == MASC_BLOCK
    assert recording.source["file"] == "sub-01_ses-0_task-0_meg.con"


@pytest.fixture()
def masc_one(masc, tmp_path):
    """A copy of the MEG-MASC replica holding sub-01's first recording only."""
    replica, _ = masc
    root = tmp_path / "bids"
    shutil.copytree(replica.root, root, ignore=shutil.ignore_patterns("sub-02", "*task-1*"))
    return root


def _edit_events(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    edit(rows)
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r[h] for h in header) for r in rows]) + "\n")


def test_meg_masc_bad_input_is_refused_with_the_file_and_line(masc_one, tmp_path):
    from neurodec.io.recipes.meg_masc import convert

    events = masc_one / "sub-01" / "ses-0" / "meg" / "sub-01_ses-0_task-0_events.tsv"
    original = events.read_text()
    # A word after the end of the recording (24 s): an error naming the line, or dropped.
    def late_word(rows):
        word_rows = [r for r in rows if "'kind': 'word'" in r["trial_type"]]
        word_rows[-1]["onset"], word_rows[-1]["sample"] = "30.0", "30000"
    _edit_events(events, late_word)
    late_line = 2 + next(i for i, line in enumerate(events.read_text().splitlines()[1:]) if line.startswith("30.0\t"))
    with pytest.raises(EventError, match=rf"task-0_events.tsv line {late_line}: word .* at 30 s lies outside"):
        convert(masc_one, tmp_path / "late.zarr")
    study = convert(masc_one, tmp_path / "late.zarr", on_outside="drop", block_duration=MASC_BLOCK,
                    test_fraction=1 / 3)
    assert study.provenance["parameters"]["words_outside_dropped"] == 1
    assert max(study.recording("sub-01/ses-0/run-0").events["onset"]) < 24.0

    # Samples written at another rate than the recording's 1000 Hz.
    events.write_text(original)
    _edit_events(events, lambda rows: [r.update(sample=str(int(round(float(r["onset"]) * 1200)))) for r in rows])
    with pytest.raises(EventError, match=r"line 2: sample 2400 does not match onset 2 s at 1000 Hz.*imply 1200.0 Hz"):
        convert(masc_one, tmp_path / "rate.zarr")

    # A missing wav: the error names the file and the events line that needs it.
    events.write_text(original)
    (masc_one / "stimuli" / "audio" / "lw1_1.wav").unlink()
    first_line = 2 + next(i for i, line in enumerate(original.splitlines()[1:]) if "lw1_1.0.wav" in line)
    with pytest.raises(InputFileError, match=rf"lw1_1.0.wav does not exist \(named by .*task-0_events.tsv "
                                             rf"line {first_line}"):
        convert(masc_one, tmp_path / "missing.zarr")
    assert not (tmp_path / "missing.zarr").exists()


# ---------------------------------------------------------------- the MOUS replica
MOUS_RATE = 1200.0
MOUS_DURATION = 24.0
MOUS_BUMP_CHANNEL = "MLC11-606"
MOUS_PREFIX = "EQ_Ramp_Int2_Int1LPF"
# Word onsets in each 3 s wav, with the words (Dutch sentences as stimuli.txt would hold them).
MOUS_SENTENCES = {
    1: "het complot van de schoolleiding",
    2: "de man liep snel weg",
    3: "zij zag een grote hond",
    4: "boek tafel lopen rood zingen",
}
MOUS_STARTS = [0.25, 0.75, 1.25, 1.75, 2.25]
MOUS_PLAYED = {
    # subject: [(wav number, audio onset in the recording)], with 'Audio onset' rows?
    "A2002": ([(1, 2.0), (2, 7.0), (3, 12.0), (4, 17.0)], True),
    "A2003": ([(3, 1.5), (1, 6.5), (4, 11.5), (2, 16.5)], False),
}


def _textgrid(words: list[tuple[float, float, str]], duration: float) -> str:
    """A Praat long-format TextGrid with a word tier (ORT-MAU, pauses as "" and <p:>) and a phoneme tier."""
    def tier(name, intervals):
        lines = ["        class = \"IntervalTier\" ", f"        name = \"{name}\" ", "        xmin = 0 ",
                 f"        xmax = {duration} ", f"        intervals: size = {len(intervals)} "]
        for k, (xmin, xmax, text) in enumerate(intervals, start=1):
            lines += [f"        intervals [{k}]:", f"            xmin = {xmin} ", f"            xmax = {xmax} ",
                      f"            text = \"{text}\" "]
        return lines

    intervals, previous = [], 0.0
    for k, (start, stop, word) in enumerate(words):
        intervals.append((previous, start, "" if k == 0 else "<p:>"))
        intervals.append((start, stop, word))
        previous = stop
    intervals.append((previous, duration, ""))
    phonemes = [(start, stop, word[0]) for start, stop, word in words]
    lines = ["File type = \"ooTextFile\"", "Object class = \"TextGrid\"", "", "xmin = 0 ", f"xmax = {duration} ",
             "tiers? <exists> ", "size = 2 ", "item []: ", "    item [1]:"] + tier("ORT-MAU", intervals)
    lines += ["    item [2]:"] + tier("MAU", phonemes)
    return "\n".join(lines) + "\n"


def build_mous_replica(root: Path, ctf_fif: Path) -> Replica:
    import mne
    import mne_bids

    sounds, files = {}, {}
    grids = root / "derivatives" / "phonemes"
    grids.mkdir(parents=True)
    for number, text in MOUS_SENTENCES.items():
        name = f"{MOUS_PREFIX}{number:03d}"
        files[name] = root / "stimuli" / "audio_files" / f"{name}.wav"
        sounds[name] = _write_sound(files[name], 20 + number, seconds=3.0)
        timed = [(start, start + 0.4, word) for start, word in zip(MOUS_STARTS, text.split())]
        (grids / f"{name}.TextGrid").write_text(_textgrid(timed, 3.0))
    (root / "stimuli" / "stimuli.txt").write_text("".join(f"{n} {t}\n" for n, t in MOUS_SENTENCES.items()))

    template = mne.io.read_raw_fif(ctf_fif, verbose="error")
    info = template.info.copy()
    with info._unlock():
        info["sfreq"] = MOUS_RATE
        info["line_freq"] = 50.0
    n_times = int(MOUS_DURATION * MOUS_RATE)
    rng = np.random.default_rng(3)
    recordings = {}
    for subject, (played, audio_onset_rows) in MOUS_PLAYED.items():
        rows, words = [(0.5, "n/a", 600, "UPPT001", 10)], []
        for number, onset in played:
            name = f"{MOUS_PREFIX}{number:03d}"
            start_file = onset - 0.025 if audio_onset_rows else onset
            rows.append((start_file, "n/a", round(start_file * MOUS_RATE), "Sound", f"Start File {number:03d}.wav"))
            if audio_onset_rows:
                rows.append((onset, "n/a", round(onset * MOUS_RATE), "Nothing", "Audio onset"))
            rows.append((onset + 3.0, "n/a", round((onset + 3.0) * MOUS_RATE), "Nothing", "End of file"))
            rows.append((onset + 3.2, "n/a", round((onset + 3.2) * MOUS_RATE), "UPPT001", 20))
            for start, word in zip(MOUS_STARTS, MOUS_SENTENCES[number].split()):
                words.append(Word(name, start, round(onset + start, 3), word))
        data = rng.standard_normal((len(info["ch_names"]), n_times)) * 1e-13
        data[info["ch_names"].index("STIM")] = 0.0
        data[info["ch_names"].index(MOUS_BUMP_CHANNEL)] += 5e-12 * _bumps(n_times, MOUS_RATE, [w.onset for w in words])
        raw = mne.io.RawArray(data, info, verbose="error")
        bids_path = mne_bids.BIDSPath(subject=subject, task="auditory", datatype="meg", root=root)
        mne_bids.write_raw_bids(raw, bids_path, format="FIF", allow_preload=True, overwrite=True, verbose="error")
        events = bids_path.copy().update(suffix="events", extension=".tsv")
        write_events_tsv(Path(events.fpath), ("onset", "duration", "sample", "type", "value"),
                         [(repr(round(r[0], 3)), *r[1:]) for r in sorted(rows, key=lambda r: r[0])])
        key = f"sub-{subject}/ses-01/run-01"
        recordings[key] = ReplicaRecording(key, Path(bids_path.fpath), Path(events.fpath), words)
    return Replica(root, recordings, sounds, files)


@pytest.fixture(scope="module")
def mous(tmp_path_factory, real_data):
    root = tmp_path_factory.mktemp("mous") / "bids"
    replica = build_mous_replica(root, real_data / "fif" / "somMDYO-18av.ds_raw.fif")
    from neurodec.io.recipes import convert

    study = convert("schoffelen-mous", root, root.parent / "mous.zarr", tmin=TMIN, tmax=TMAX, shift=SHIFT,
                    test_fraction=0.25, seed=0)
    return replica, study


def test_mous_segments_follow_the_sounds_and_alignments(mous):
    replica, study = mous
    segments = check_segments_follow_the_words(replica, study, 30.0)
    # One block per sentence (30 s blocks, 3 s wavs), one of the four held out; nothing dropped.
    assert sorted(segments) == sorted({f"{w.sound}@{w.start:.3f}s" for r in replica.recordings.values()
                                       for w in r.words})
    blocks = {s["block"]: s["split"] for s in segments.values()}
    assert sorted(blocks) == [f"{MOUS_PREFIX}{n:03d}#0" for n in range(1, 5)]
    assert sorted(blocks.values()) == ["test", "train", "train", "train"]
    # Each segment's metadata holds its wav's sentence (stimuli.txt).
    assert {s["sound"]: s["sentence"] for s in segments.values()} == {
        f"{MOUS_PREFIX}{n:03d}": text for n, text in MOUS_SENTENCES.items()}
    # Words placed at 'Audio onset' (sub-A2002) or at 'Start File' (sub-A2003, no audio-onset rows).
    # Every word is kept: a wav's last word and the next wav's first are exactly 3 s apart, so
    # their brain windows touch without sharing a sample, whatever their splits.
    for key, recording in replica.recordings.items():
        events = study.recording(key).events
        stored = sorted(zip(events["stimulus_id"].tolist(), events["onset"].tolist(), events["sample"].tolist()))
        expected = sorted((f"{w.sound}@{w.start:.3f}s", w.onset) for w in recording.words)
        assert [s[0] for s in stored] == [e[0] for e in expected]
        assert [s[1] for s in stored] == pytest.approx([e[1] for e in expected])
        assert [s[2] for s in stored] == [round(e[1] * SFREQ_OUT) for e in expected]
    check_audio_spans(replica, study, segments)


def test_mous_windows_channels_and_provenance(mous, real_data):
    import mne

    replica, study = mous
    check_windows_line_up(replica, study, MOUS_BUMP_CHANNEL)
    ctf = mne.io.read_raw_fif(real_data / "fif" / "somMDYO-18av.ds_raw.fif", verbose="error").pick("mag")
    recording = study.recording("sub-A2002/ses-01/run-01")
    assert recording.ch_names == ctf.ch_names and len(ctf.ch_names) == 151  # axial gradiometers, no references
    locations = np.array([ch["loc"][:3] for ch in ctf.info["chs"]])
    head = mne.transforms.apply_trans(ctf.info["dev_head_t"], locations)
    np.testing.assert_allclose(recording.sensor_positions[...], head, atol=1e-7)
    assert recording.preprocessing[0]["from_sfreq"] == MOUS_RATE and recording.sfreq == SFREQ_OUT
    assert study.provenance["converter"] == "neurodec.io.recipes.mous"
    assert study.provenance["parameters"]["unit"] == "word"


def test_mous_alignment_table_sound_unit_and_bad_input(mous, tmp_path):
    from neurodec.io.recipes.mous import convert, read_word_alignments

    replica, _ = mous
    # A table of word onsets reads as the TextGrids do.
    grids = read_word_alignments(replica.root / "derivatives" / "phonemes")
    table = tmp_path / "alignments.tsv"
    table.write_text("sound\tonset\tword\n" + "".join(f"{sound}.wav\t{onset}\t{word}\n" for sound, entries in
                                                      grids.items() for onset, word in entries))
    assert read_word_alignments(table) == grids == {
        f"{MOUS_PREFIX}{n:03d}": list(zip(MOUS_STARTS, text.split())) for n, text in MOUS_SENTENCES.items()}

    root = tmp_path / "bids"
    shutil.copytree(replica.root, root, ignore=shutil.ignore_patterns("sub-A2003", "phonemes"))
    with pytest.raises(InputFileError, match="word alignments .*phonemes do not exist.*unit='sound'"):
        convert(root, tmp_path / "none.zarr")
    # unit='sound': one segment per wav at its start, labelled with its first word.
    study = convert(root, tmp_path / "sound.zarr", unit="sound", test_fraction=0.25)
    segments = _segment_table(study)
    assert {sid: s["word"] for sid, s in segments.items()} == {
        f"{MOUS_PREFIX}{n:03d}@0.000s": text.split()[0] for n, text in MOUS_SENTENCES.items()}
    assert sorted(study.recording("sub-A2002/ses-01/run-01").events["sample"].tolist()) == [240, 840, 1440, 2040]

    # A missing wav: named, with the events line that plays it.
    (root / "stimuli" / "audio_files" / f"{MOUS_PREFIX}003.wav").unlink()
    events = replica.recordings["sub-A2002/ses-01/run-01"].events.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(events) if text.endswith("Start File 003.wav"))
    with pytest.raises(InputFileError, match=rf"{MOUS_PREFIX}003.wav does not exist \(played at .*"
                                             rf"sub-A2002_task-auditory_events.tsv line {line}"):
        convert(root, tmp_path / "missing.zarr", alignments=table)


# ---------------------------------------------------------------- reading KIT through BIDS
def test_read_raw_bids_reads_the_real_kit_file(real_data, tmp_path):
    """mne-bids passes preload=False to the KIT reader itself (a second preload is refused);
    neurodec.io.bids.read_raw_bids loads the data afterwards, or leaves it on disk."""
    import mne
    import mne_bids

    from neurodec.io.bids import find_bids_recordings, read_raw_bids

    path = real_data / "kit" / "test_as-raw.con"
    kit = mne.io.read_raw_kit(path, verbose="error")
    kit.info["line_freq"] = 60.0
    root = tmp_path / "bids"
    mne_bids.write_raw_bids(kit, mne_bids.BIDSPath(subject="01", session="0", task="0", datatype="meg", root=root),
                            verbose="error")
    [recording] = find_bids_recordings(root)
    assert recording.fpath.name == "sub-01_ses-0_task-0_meg.con"
    raw = read_raw_bids(recording)
    direct = mne.io.read_raw_kit(path, preload=True, verbose="error")
    # mne-bids reads the file without MNE's synthetic trigger channel; every other channel is the same.
    assert raw.preload and raw.ch_names == [name for name in direct.ch_names if name != "STI 014"]
    assert raw.info["sfreq"] == direct.info["sfreq"] == 1000.0
    np.testing.assert_array_equal(raw.get_data(), direct.get_data(picks=raw.ch_names))
    header = read_raw_bids(recording, preload=False)
    assert not header.preload and (header.n_times, header.first_samp) == (direct.n_times, direct.first_samp)


# ---------------------------------------------------------------- options and configs
def test_recipe_options_lay_preprocessing_over_the_papers_defaults():
    from neurodec.io.options import load_options
    from neurodec.io.recipes._common import ingest_options

    default = load_options({**ingest_options({}, None), "kind": "audio"})
    assert (default.preprocessing.resample, default.preprocessing.resample_method) == (120.0, "polyphase")
    assert default.preprocessing.bandpass is None and default.picks is None
    # `neurodec convert ... --set preprocessing.resample=100` keeps the polyphase method.
    changed = load_options(ingest_options({"resample": 100, "bandpass": {"l_freq": 0.1}}, "mag"))
    assert (changed.preprocessing.resample, changed.preprocessing.resample_method) == (100.0, "polyphase")
    assert changed.preprocessing.bandpass.l_freq == 0.1 and changed.picks == ["mag"]
    assert ingest_options(None, ["mag", "grad"])["preprocessing"] == {}


@pytest.mark.parametrize("name, n_chans, n_subjects", [("meg-masc/defossez.yaml", 208, 27),
                                                       ("schoffelen-mous/defossez.yaml", 273, 96)])
def test_defossez_configs_hold_the_speech_setting_and_build(name, n_chans, n_subjects):
    import torch

    from neurodec.config import load_config
    from neurodec.losses import BrainMagickClipLoss, WeightedLoss
    from neurodec.models import create_model
    from tests.conftest import PROJECT_ROOT

    config = load_config(PROJECT_ROOT / "configs" / name)
    window = config.data.window
    assert (window.tmin, window.tmax, window.shift) == (-0.5, 2.5, 0.15)
    assert (config.data.split.by, config.data.split.val_groups) == ("stimulus", "block")
    assert config.data.target == "wav2vec2-xlsr53-l14-18" and config.data.store.endswith(".zarr")
    assert [t.name for t in config.data.transforms] == ["robust_scaler", "clamp"]
    assert config.data.transforms[1].limit == 20
    assert (config.optim.lr, config.optim.weight_decay, config.train.batch_size) == (3e-4, 0.0, 256)
    assert config.train.selection_metric.startswith("val/")
    loss = WeightedLoss(config.loss.terms)
    assert isinstance(loss.terms["brainmagick_clip"], BrainMagickClipLoss)
    # The paper's encoder: 3 s at 120 Hz in, 1024 wav2vec2 features per time step out; one
    # 270 x 270 matrix per subject.
    torch.manual_seed(0)
    model = create_model(config.model.name, n_chans=n_chans, n_times=360, sfreq=120.0, n_subjects=n_subjects,
                         **config.model.arguments()).eval()
    assert sum(p.numel() for p in model.subject_layer.parameters()) == n_subjects * 270 * 270
    model.set_subject_positions(0, torch.rand(n_chans, 2))
    with torch.no_grad():
        brain = model(torch.randn(2, n_chans, 360), torch.zeros(2, dtype=torch.long))
    assert brain.shape == (2, 1024, 360)
    total, _ = loss(brain, torch.randn(2, 1024, 360))
    assert torch.isfinite(total)


def test_meg_masc_sound_names_match_files_in_any_capitalisation(tmp_path):
    from neurodec.io.recipes.meg_masc import sound_path

    audio = tmp_path / "stimuli" / "audio"
    audio.mkdir(parents=True)
    (audio / "the_black_willow_0.wav").write_bytes(b"")
    (audio / "lw1_0.wav").write_bytes(b"")
    # The events name folders and files in other capitalisations, and with a float index.
    assert sound_path(tmp_path, "Stimuli/Audio/The_Black_Willow_0.0.wav") == audio / "the_black_willow_0.wav"
    assert sound_path(tmp_path, "stimuli/audio/lw1_0.0.wav") == audio / "lw1_0.wav"
    assert sound_path(tmp_path, "stimuli/audio/lw1_1.wav") is None
    assert sound_path(tmp_path, "sounds/lw1_0.wav") is None
