"""The EEG speech recipes (Brennan 2019, Broderick 2019) on small replicas of their releases.

Each replica is written here with the published file names, folders, MATLAB variable names
and csv columns, filled with synthetic signals: EEG noise with a 100 uV impulse on one
channel at the onset of every word whose onset lies on a grid shared by the native and the
120 Hz sampling rates, and noise sounds. After conversion the windows of
``WindowDataset(tmin=-0.5, tmax=2.5, shift=0.15)`` must peak at the sample where the word
onset falls (0.35 s into the window: sample 42 at 120 Hz), the events must sit at the
samples worked out by hand from the replica's own numbers, and each segment's sound must be
the wav samples of its span. Each subject hears the sounds at different times, and some
recordings' lengths are not whole numbers of 120 Hz samples (where MNE's FFT resampling would
move the data by half a sample against the events).

What the Brennan replica follows, and where it is uncertain:
- ``Sxx.mat`` holds the variable ``raw``, a FieldTrip raw structure (one continuous trial,
  ``label`` 1..61 without 29, ``VEOG``, then ``AUD`` or ``Aux5``, ``fsample`` 500,
  ``hdr.chanunit`` 'uV') as brainmagick's and Eelbrain's readers of the release expect.
- ``proc/Sxx.mat`` holds ``proc.trl`` with ``begsample, endsample, offset, segment, tmin,
  Order`` (``varnames`` naming the last three; S02 with one more column, as brainmagick and
  Eelbrain handle it): the replica's rows start each word epoch 100 ms before the onset
  (offset -50; the real epoch length is not known here and does not matter to the recipe),
  with ``tmin`` the word's onset in its sound file. That ``tmin`` is the csv
  onset is read from Eelbrain's import (sound start = time zero - tmin); it was not checked
  against the real files here.
- The electrode file is ``easycapM10-acti61_elec.sfp`` (name, x, y, z in cm); the replica's
  positions are synthetic points on a sphere, not the real cap's.

The Broderick replica: ``EEG/Subject<N>/Subject<N>_Run<R>.mat`` (eegData samples x 128 in uV,
mastoids samples x 2, fs 128) and ``Stimuli/Text/Run<R>.mat`` (wordVec, onset_time,
offset_time, sentence_boundaries), with the run's EEG starting at the audio onset. The audio
files are not part of the Dryad release (the recipe's docstring says why and where they come
from): ``audio<R>.wav`` follows the envelopes' names and brainmagick's copy, the folder
``Stimuli/Audio`` is this project's choice.
"""

from __future__ import annotations

import logging
import shutil

import mne
import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat, savemat, wavfile

from neurodec.data import WindowDataset
from neurodec.errors import EventError, InputFileError
from neurodec.io.recipes import convert
from neurodec.io.recipes.brennan2019 import sound_starts
from neurodec.io.speech import segment_id
from neurodec.targets.cache import StoredStimuli

SOUND_RATE = 16000
VOCABULARY = ("alice", "was", "beginning", "to", "get", "very", "tired", "of", "sitting", "by", "her", "sister")
IMPULSE_UV = 100.0
WINDOW = {"tmin": -0.5, "tmax": 2.5, "shift": 0.15}
RESAMPLE_ONLY = {"bandpass": None}  # laid over the default: 120 Hz polyphase, without the band-pass
ONSET_INDEX = 42  # a window starts round((tmin + shift) * 120) = -42 samples from the onset


def cell(items, shape=None):
    """A MATLAB cell array for scipy.io.savemat."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array.reshape(shape or (len(items), 1))


def write_noise_wav(path, seconds, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(seed).integers(-8000, 8000, int(seconds * SOUND_RATE)).astype(np.int16)
    wavfile.write(path, SOUND_RATE, samples)
    return samples


def word_onsets(duration, step, grid):
    """Onsets every ``step`` s (multiples of ``grid``), every third one moved off the grid."""
    onsets = np.round(np.arange(0.4, duration - 0.6, step) / grid) * grid
    jitter = np.where(np.arange(len(onsets)) % 3 == 2, 0.013, 0.0)
    return np.round(onsets + jitter, 4), jitter == 0


def expected_sample(time, native_rate, rate=120.0):
    """The stored sample of an event at ``time`` s: its onset at the stored rate, rounded once
    (``native_rate`` is the rate of the source file; the stored one is ``rate``)."""
    return np.round(np.asarray(time) * rate).astype(np.int64)


def check_windows_peak_at_onsets(study, grid_ids, channel):
    """Every window of a grid word (one per subject who heard it) peaks at the onset sample."""
    windows = WindowDataset(study, **WINDOW)
    batch = windows.read_batch(np.arange(len(windows)))
    checked = 0
    for brain, stimulus in zip(batch["brain"], batch["stimulus_id"]):
        if stimulus not in grid_ids:
            continue
        trace = np.asarray(brain)[channel]
        around = trace[ONSET_INDEX - 6 : ONSET_INDEX + 7]
        assert int(np.argmax(around)) == 6, (stimulus, around)
        checked += 1
    return checked


def check_segment_sounds(study, sounds, chosen):
    """The segment's waveform is the wav's samples from 0.5 s before its onset (the onset read
    from the segment id ``<sound>@<onset>s``) for 3 s, zero-padded outside the file."""
    stored = StoredStimuli(study, chosen, "audio")
    for position, stimulus in enumerate(chosen):
        sound, onset = stimulus[:-1].split("@")
        samples = sounds[sound].astype(np.float64) / 32768.0
        first = int(round((float(onset) - 0.5) * SOUND_RATE))
        expected = np.zeros(int(round(3.0 * SOUND_RATE)))
        lo, hi = max(first, 0), min(first + len(expected), len(samples))
        expected[lo - first : hi - first] = samples[lo:hi]
        waveform = stored[position]
        assert waveform.sample_rate == SOUND_RATE
        np.testing.assert_allclose(waveform.samples, expected, atol=1e-6)


# ----------------------------------------------------------------------- Brennan 2019
BRENNAN_SOUNDS = {1: 24.0, 2: 20.0}
BRENNAN_STARTS = {"S01": {1: 2.0, 2: 28.5}, "S02": {1: 3.5, 2: 30.25}}
BRENNAN_SECONDS = {"S01": 55.0, "S02": 56.006}  # S02: 28003 samples, not a whole number at 120 Hz
SCALP = [str(i) for i in range(1, 62) if i != 29]


def sphere_positions(n, radius=9.0):
    """n points spread over the upper part of a sphere (cm), as an .sfp file lists them."""
    index = np.arange(n) + 0.5
    z = 1 - index / n * 1.3
    phi = index * np.pi * (3 - np.sqrt(5))
    ring = np.sqrt(np.clip(1 - z**2, 0, None))
    return radius * np.c_[ring * np.cos(phi), ring * np.sin(phi), z]


def brennan_replica(root, subjects=("S01", "S02"), *, seconds=None, fsample=500.0, skipped=()):
    """A folder laid out as the Deep Blue release; returns what the test needs to know."""
    root.mkdir(parents=True, exist_ok=True)
    sounds, rows = {}, []
    for segment, duration in BRENNAN_SOUNDS.items():
        sounds[f"DownTheRabbitHoleFinal_SoundFile{segment}"] = write_noise_wav(
            root / "audio" / f"DownTheRabbitHoleFinal_SoundFile{segment}.wav", duration, seed=segment)
        onsets, on_grid = word_onsets(duration, 0.45, 0.05)
        for onset, grid in zip(onsets, on_grid):
            rows.append({"Word": VOCABULARY[len(rows) % len(VOCABULARY)], "Segment": segment, "onset": onset,
                         "offset": round(onset + 0.3, 4), "Order": len(rows) + 1, "grid": grid})
    table = pd.DataFrame(rows)
    published = table.drop(columns="grid").assign(
        LogFreq=8.0, LogFreq_Prev=8.0, LogFreq_Next=8.0, SndPower=0.1, Length=0.3, Position=1, Sentence=1,
        IsLexical=1, NGRAM=5.0, RNN=5.0, CFG=5.0)
    published.to_csv(root / "AliceChapterOne-EEG.csv", index=False)
    positions = sphere_positions(61)
    (root / "easycapM10-acti61_elec.sfp").write_text(
        "".join(f"{i + 1}\t{x:.3f}\t{y:.3f}\t{z:.3f}\n" for i, (x, y, z) in enumerate(positions)))
    savemat(root / "datasets.mat", {"use": cell(["S01.mat"])})
    (root / "proc").mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    for subject in subjects:
        audio_channel = "AUD" if subject == "S01" else "Aux5"
        labels = SCALP + ["VEOG", audio_channel]
        n_samples = int((seconds or BRENNAN_SECONDS)[subject] * 500)
        data = rng.normal(0.0, 2.0, (len(labels), n_samples))
        trl = []
        for row in table.itertuples():
            zero = int(np.round((BRENNAN_STARTS[subject][row.Segment] + row.onset) * 500))  # 0-based sample
            if row.grid and zero < n_samples:
                data[0, zero] += IMPULSE_UV
            trl.append([zero + 1 - 50, zero + 1 + 399, -50, row.Segment, row.onset, row.Order])
        trl = np.asarray(trl, dtype=np.float64)
        if subject == "S02":  # the published S02 trl holds one more column before the named ones
            trl = np.insert(trl, 3, 0.0, axis=1)
        raw = {
            "hdr": {"Fs": fsample, "nChans": len(labels), "nSamples": n_samples, "nSamplesPre": 0, "nTrials": 1,
                    "label": cell(labels), "chantype": cell(["eeg"] * len(labels)),
                    "chanunit": cell(["uV"] * len(labels))},
            "label": cell(labels),
            "trial": cell([data], (1, 1)),
            "time": cell([np.arange(n_samples)[None, :] / fsample], (1, 1)),
            "fsample": fsample,
            "sampleinfo": np.array([[1, n_samples]], dtype=np.float64),
            "cfg": {"trackconfig": "off"},
        }
        savemat(root / f"{subject}.mat", {"raw": raw})
        proc = {"subject": subject, "trl": trl, "varnames": cell(["segment", "tmin", "Order"], (1, 3)),
                "tot_trials": len(trl), "tot_chans": 61, "implicitref": "29", "refchannels": cell(["25", "29"], (1, 2)),
                "rejections": {"badchans": cell(["7"], (1, 1))}}
        savemat(root / "proc" / f"{subject}.mat", {"proc": proc})
    for subject in skipped:  # a dataset the authors did not preprocess: no proc/Sxx.mat
        savemat(root / f"{subject}.mat", {"raw": {"fsample": 500.0}})
    return {"words": table, "sounds": sounds, "positions": positions}


@pytest.fixture(scope="module")
def brennan(tmp_path_factory):
    root = tmp_path_factory.mktemp("brennan") / "alice"
    replica = brennan_replica(root, skipped=("S03",))
    study = convert("brennan2019", root, root.parent / "brennan.zarr")
    return root, replica, study


def test_brennan_events_and_windows_line_up_with_the_word_onsets(brennan):
    root, replica, study = brennan
    words = replica["words"]
    assert study.provenance["converter"] == "neurodec.io.recipes.brennan2019"
    assert study.subjects == ["S01", "S02"]  # S03 has no proc/S03.mat: skipped
    ids = {(row.Segment, row.onset): segment_id(f"DownTheRabbitHoleFinal_SoundFile{row.Segment}", row.onset)
           for row in words.itertuples()}
    for recording in study.recordings():
        assert recording.sfreq == 120.0 and recording.ch_names == SCALP
        events = recording.events
        by_id = dict(zip(events["stimulus_id"].tolist(), events["sample"].tolist()))
        starts = BRENNAN_STARTS[recording.subject]
        kept = [row for row in words.itertuples() if ids[row.Segment, row.onset] in by_id]
        # Only segments dropped at a train/test boundary are missing, never a word of a kept segment.
        assert {ids[r.Segment, r.onset] for r in kept} == set(events["stimulus_id"].tolist()) == set(
            study.stimuli["id"].tolist())
        for row in kept:
            assert by_id[ids[row.Segment, row.onset]] == expected_sample(starts[row.Segment] + row.onset, 500.0)
        assert recording.attrs["bads"] == ["7"]  # proc.rejections.badchans
        info = recording.attrs["info"]
        assert info["sound_starts"] == {"1": starts[1], "2": starts[2]} and info["words_outside_recording"] == 0
        steps = [step["step"] for step in recording.preprocessing]
        assert steps == ["bandpass_filter", "resample"]
        assert (recording.preprocessing[0]["l_freq"], recording.preprocessing[0]["h_freq"]) == (0.5, 40.0)
        assert recording.preprocessing[1]["method"] == "polyphase"
    # Stimuli: one segment per (sound, onset), the word as category, the sound file's absolute path.
    table = study.stimuli
    word_of = {ids[r.Segment, r.onset]: r.Word for r in words.itertuples()}
    assert [word_of[s] for s in table["id"].tolist()] == table["category"].tolist()
    assert {str(u) for u in table["uri"].tolist()} == {
        str((root / "audio" / f"DownTheRabbitHoleFinal_SoundFile{k}.wav").resolve()) for k in (1, 2)}
    grid_ids = {ids[r.Segment, r.onset] for r in words.itertuples() if r.grid}
    assert check_windows_peak_at_onsets(study, grid_ids, channel=0) >= 60
    first_ids = [s for s in table["id"].tolist() if s.endswith("@0.400s")][:2]
    # Spans reaching before the sound's start, inside it, and past its end (zero-padded).
    check_segment_sounds(study, replica["sounds"], first_ids + table["id"].tolist()[5:7] + table["id"].tolist()[-1:])


def test_brennan_positions_are_the_electrode_files(brennan):
    root, replica, study = brennan
    montage = mne.channels.read_custom_montage(root / "easycapM10-acti61_elec.sfp").get_positions()["ch_pos"]
    recording = study.recordings(subject="S01")[0]
    np.testing.assert_allclose(recording.sensor_positions, np.stack([montage[name] for name in SCALP]), atol=1e-7)
    # MNE scales the file to a 9.5 cm head radius; the replica's sphere has a 9 cm one.
    np.testing.assert_allclose(recording.sensor_positions, replica["positions"][[int(n) - 1 for n in SCALP]]
                               * 0.095 / 9.0, atol=1e-5)
    assert set(recording.ch_types) == {"eeg"} and set(recording.units) == {"V"}


def test_brennan_values_in_volts_and_the_papers_subset(tmp_path):
    root = tmp_path / "alice"
    brennan_replica(root, subjects=("S01",), seconds={"S01": 50.0})
    # The last words of sound file 2 (it ends at 48.5 s) have brain windows past the EEG's 50 s: dropped.
    study = convert("brennan2019", root, tmp_path / "raw.zarr", subjects="use", preprocessing=None, picks=None,
                    on_outside="drop")
    recording = study.recordings()[0]
    assert study.subjects == ["S01"]  # datasets.mat: use = {'S01.mat'}
    from neurodec.io.recipes.brennan2019 import _subjects

    assert _subjects(root, ["use"]) == ["S01"]  # as the command line passes it: --subjects use
    stored = np.asarray(recording.data[...], dtype=np.float64)
    original = loadmat(root / "S01.mat", simplify_cells=True)["raw"]["trial"] * 1e-6
    np.testing.assert_allclose(stored, original, rtol=1e-6, atol=1e-12)  # float32 store
    assert recording.ch_names == SCALP + ["VEOG", "AUD"]
    assert recording.ch_types == ["eeg"] * 60 + ["eog", "misc"]
    assert np.isnan(recording.sensor_positions[60:]).all() and recording.preprocessing == []
    events = recording.events
    onset_of = {segment_id(f"DownTheRabbitHoleFinal_SoundFile{r.Segment}", r.onset): BRENNAN_STARTS["S01"][r.Segment]
                + r.onset for r in pd.read_csv(root / "AliceChapterOne-EEG.csv").itertuples()}
    expected = [expected_sample(onset_of[s], 500.0, 500.0) for s in events["stimulus_id"].tolist()]
    assert events["sample"].tolist() == expected


def replica_onsets(root, segment):
    table = pd.read_csv(root / "AliceChapterOne-EEG.csv")
    return table.loc[table["Segment"] == segment, "onset"].to_numpy()


def test_brennan_bad_input_is_refused_with_the_file_named(tmp_path):
    root = tmp_path / "alice"
    brennan_replica(root, subjects=("S02",), seconds={"S02": 45.0}, skipped=("S03",))
    # Words after the recording stopped (sound file 2 runs to 50.25 s, the EEG to 45 s).
    with pytest.raises(EventError, match=r"S02.mat: \d+ of \d+ word onsets fall outside the recording"):
        convert("brennan2019", root, tmp_path / "a.zarr", subjects=["S02"], preprocessing=RESAMPLE_ONLY)
    study = convert("brennan2019", root, tmp_path / "b.zarr", subjects="2", preprocessing=RESAMPLE_ONLY,
                    on_outside="drop")
    recording = study.recordings()[0]
    # Left out: the words heard after the EEG stopped, and those whose brain window (to 2.65 s
    # after the onset) runs past its end.
    late = [onset for onset in BRENNAN_STARTS["S02"][2] + replica_onsets(root, 2)
            if onset + WINDOW["tmax"] + WINDOW["shift"] > 45.0]
    assert recording.attrs["info"]["words_outside_recording"] == len(late) > 0
    assert recording.events["sample"].max() < recording.shape[1]
    # A dataset without its preprocessing parameters cannot be aligned.
    with pytest.raises(InputFileError, match=r"proc/S03.mat does not exist"):
        convert("brennan2019", root, tmp_path / "c.zarr", subjects=["S03"])
    # A sound file missing.
    (root / "audio" / "DownTheRabbitHoleFinal_SoundFile2.wav").unlink()
    with pytest.raises(InputFileError, match=r"DownTheRabbitHoleFinal_SoundFile2.wav does not exist"):
        convert("brennan2019", root, tmp_path / "d.zarr", subjects=["S02"])
    assert not any((tmp_path / name).exists() for name in ("a.zarr", "c.zarr", "d.zarr"))


def test_brennan_other_sampling_rate_is_refused(tmp_path):
    root = tmp_path / "alice"
    brennan_replica(root, subjects=("S01",), seconds={"S01": 50.0}, fsample=512.0)
    with pytest.raises(InputFileError, match=r"S01.mat: raw.fsample is 512 Hz; the study states 500 Hz"):
        convert("brennan2019", root, tmp_path / "s.zarr")


def test_sound_starts_reads_proc_trl_and_corrects_shifted_labels(caplog):
    words = pd.DataFrame({"Word": list("abcdef"), "Segment": [1, 1, 1, 2, 2, 2],
                          "onset": [0.5, 1.25, 2.0, 0.3, 0.9, 1.7]})
    names = ["segment", "tmin", "Order"]
    # Sound 2 starts at 18.0 s, i.e. its time zero (1-based sample) 500 * (18 + tmin) + 1, epochs from -100 ms.
    zero = np.round((18.0 + np.array([0.3, 0.9, 1.7])) * 500) + 1
    rows = np.c_[zero - 50, zero + 399, np.full(3, -50), np.full(3, 1), [0.3, 0.9, 1.7], [4, 5, 6]]
    with caplog.at_level(logging.WARNING, logger="neurodec"):
        assert sound_starts(rows, names, words, 500.0, "S26") == {2: 18.0}  # labelled 1, the onsets of sound 2
    assert "labelled segment 1 hold the word onsets of sound file 2" in caplog.text
    broken = rows.copy()
    broken[1, 0] += 5  # one epoch's time zero moved by 5 samples: no single start any more
    with pytest.raises(InputFileError, match="disagree on when it started by 10.0 ms"):
        sound_starts(broken, names, words, 500.0, "S26")
    unknown = rows.copy()
    unknown[:, 4] += 0.1
    with pytest.raises(InputFileError, match="match no segment"):
        sound_starts(unknown, names, words, 500.0, "S26")
    with pytest.raises(InputFileError, match=r"lack \['tmin'\]"):
        sound_starts(rows, ["segment", "start", "Order"], words, 500.0, "S26")


# ----------------------------------------------------------------------- Broderick 2019
BRODERICK_SECONDS = 40.03  # 5123 samples: not a whole number at 120 Hz
BRODERICK_AUDIO = {1: 38.0, 2: 36.0}


def broderick_replica(root, subjects=(1, 2), runs=(1, 2), *, fs=128, eeg_seconds=BRODERICK_SECONDS, audio=True):
    """A "Natural Speech" folder laid out as the Dryad release, plus the run audio."""
    rng = np.random.default_rng(11)
    sounds, words = {}, {}
    for run in runs:
        if audio:
            sounds[f"audio{run}"] = write_noise_wav(root / "Stimuli" / "Audio" / f"audio{run}.wav",
                                                    BRODERICK_AUDIO[run], seed=100 + run)
        onsets, on_grid = word_onsets(BRODERICK_AUDIO[run], 0.5, 0.125)
        vocabulary = [VOCABULARY[(i + run) % len(VOCABULARY)] for i in range(len(onsets))]
        words[run] = (vocabulary, onsets, on_grid)
        (root / "Stimuli" / "Text").mkdir(parents=True, exist_ok=True)
        savemat(root / "Stimuli" / "Text" / f"Run{run}.mat", {
            "wordVec": cell(vocabulary), "onset_time": onsets[:, None], "offset_time": onsets[:, None] + 0.3,
            "sentence_boundaries": np.array([[0.0], [onsets[-1] + 0.3]])})
        (root / "Stimuli" / "Envelopes").mkdir(parents=True, exist_ok=True)
        savemat(root / "Stimuli" / "Envelopes" / f"audio{run}_128Hz.mat",
                {"env": np.zeros((int(BRODERICK_AUDIO[run] * 128), 1)), "fs": 128})
    eeg = {}
    for subject in subjects:
        folder = root / "EEG" / f"Subject{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        for run in runs:
            n_samples = int(eeg_seconds * fs)
            data = rng.normal(0.0, 2.0, (n_samples, 128))
            mastoids = rng.normal(0.0, 2.0, (n_samples, 2)) + 5.0
            _, onsets, on_grid = words[run]
            for onset in onsets[on_grid]:
                sample = int(np.round(onset * fs))
                if sample < n_samples:
                    data[sample, 0] += IMPULSE_UV
            eeg[subject, run] = (data, mastoids)
            savemat(folder / f"Subject{subject}_Run{run}.mat", {"eegData": data, "mastoids": mastoids, "fs": fs})
    return {"sounds": sounds, "words": words, "eeg": eeg}


@pytest.fixture(scope="module")
def broderick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broderick")
    replica = broderick_replica(folder / "Natural Speech")
    study = convert("broderick2019", folder, folder / "broderick.zarr")  # the folder holding "Natural Speech"
    return folder / "Natural Speech", replica, study


def test_broderick_events_and_windows_line_up_with_the_word_onsets(broderick):
    root, replica, study = broderick
    assert study.provenance["converter"] == "neurodec.io.recipes.broderick2019"
    assert study.subjects == ["01", "02"]
    assert sorted((r.subject, r.run) for r in study.recordings()) == [("01", "01"), ("01", "02"), ("02", "01"),
                                                                      ("02", "02")]
    known = set(study.stimuli["id"].tolist())
    grid_ids = set()
    for recording in study.recordings():
        run = int(recording.run)
        vocabulary, onsets, on_grid = replica["words"][run]
        ids = [segment_id(f"audio{run}", onset) for onset in onsets]
        grid_ids |= {i for i, grid in zip(ids, on_grid) if grid}
        events = recording.events
        kept = [i for i, stimulus in enumerate(ids) if stimulus in known]
        assert events["stimulus_id"].tolist() == [ids[i] for i in kept]
        assert events["value"].tolist() == [vocabulary[i] for i in kept]
        assert events["sample"].tolist() == expected_sample(onsets[kept], 128.0).tolist()
        assert recording.sfreq == 120.0 and recording.ch_names == mne.channels.make_standard_montage(
            "biosemi128").ch_names
        assert set(recording.units) == {"V"} and recording.attrs["info"]["words_outside_recording"] == 0
    table = study.stimuli
    assert {str(u) for u in table["uri"].tolist()} == {
        str((root / "Stimuli" / "Audio" / f"audio{run}.wav").resolve()) for run in (1, 2)}
    assert check_windows_peak_at_onsets(study, grid_ids, channel=0) >= 80
    check_segment_sounds(study, replica["sounds"], table["id"].tolist()[:2] + table["id"].tolist()[-2:])


def test_broderick_positions_are_mnes_biosemi128_in_the_head_frame(broderick):
    _, _, study = broderick
    montage = mne.channels.make_standard_montage("biosemi128")
    to_head = mne.channels.compute_native_head_t(montage)
    native = np.stack([montage.get_positions()["ch_pos"][name] for name in montage.ch_names])
    np.testing.assert_allclose(study.recordings()[0].sensor_positions, mne.transforms.apply_trans(to_head, native),
                               atol=1e-7)


def test_broderick_values_units_and_mastoid_reference(tmp_path):
    root = tmp_path / "Natural Speech"
    replica = broderick_replica(root, subjects=(3,), runs=(2,))
    study = convert("broderick2019", root, tmp_path / "raw.zarr", subjects="Subject3", runs=[2], reference="mastoids",
                    preprocessing=None, picks=None)
    recording = study.recordings()[0]
    assert (recording.subject, recording.run) == ("03", "02")
    data, mastoids = replica["eeg"][3, 2]
    expected = np.concatenate([data - mastoids.mean(axis=1, keepdims=True), mastoids], axis=1).T * 1e-6
    np.testing.assert_allclose(np.asarray(recording.data[...], dtype=np.float64), expected, rtol=1e-6, atol=1e-12)
    assert recording.ch_names[-2:] == ["M1", "M2"] and recording.ch_types == ["eeg"] * 128 + ["misc"] * 2
    _, onsets, _ = replica["words"][2]
    assert recording.events["sample"].tolist()[:5] == np.round(onsets[:5] * 128).astype(int).tolist()


def test_broderick_bad_input_is_refused_with_the_file_named(tmp_path):
    root = tmp_path / "Natural Speech"
    broderick_replica(root, subjects=(1,), runs=(1,), eeg_seconds=30.0)
    # The run's audio (38 s) continues after its EEG (30 s) stops.
    with pytest.raises(EventError, match=r"Subject1_Run1.mat: \d+ of \d+ word onsets fall outside the recording"):
        convert("broderick2019", root, tmp_path / "a.zarr", preprocessing=RESAMPLE_ONLY)
    study = convert("broderick2019", root, tmp_path / "b.zarr", preprocessing=RESAMPLE_ONLY,
                    on_outside="drop")
    assert study.recordings()[0].attrs["info"]["words_outside_recording"] > 0
    # The audio the Dryad release does not ship.
    shutil.rmtree(root / "Stimuli" / "Audio")
    with pytest.raises(InputFileError, match=r"Stimuli/Audio/audio1.wav does not exist"):
        convert("broderick2019", root, tmp_path / "c.zarr")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_broderick_other_sampling_rate_is_refused(tmp_path):
    root = tmp_path / "Natural Speech"
    broderick_replica(root, subjects=(1,), runs=(1,), fs=100)
    with pytest.raises(InputFileError, match=r"Subject1_Run1.mat: fs is 100 Hz; the study releases every run at 128"):
        convert("broderick2019", root, tmp_path / "s.zarr")


def test_docstring_examples():
    import doctest

    from neurodec.io.recipes import _common, _speech, brennan2019, broderick2019

    for module in (brennan2019, broderick2019, _common, _speech):
        assert doctest.testmod(module).failed == 0, module.__name__
