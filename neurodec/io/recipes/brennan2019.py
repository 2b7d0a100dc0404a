"""Brennan & Hale 2019, "Alice in Wonderland" EEG: the Deep Blue release into a store.

Brennan, J. R. (2018). EEG Datasets for Naturalistic Listening to "Alice in Wonderland".
University of Michigan Deep Blue, doi:10.7302/Z29C6VNH. The recipe reads the release as
published (``audio.zip`` and ``proc.zip`` unpacked in place)::

    SOURCE/
      S01.mat ... S49.mat            FieldTrip raw data: variable ``raw`` (trial, time, label,
                                     fsample, hdr, sampleinfo), 500 Hz, values in microvolts
      proc/S01.mat ...               the authors' preprocessing parameters for 42 datasets:
                                     variable ``proc`` (trl, varnames, rejections, ...)
      AliceChapterOne-EEG.csv        one row per word: Word, Segment (sound file 1-12), onset,
                                     offset (s in the sound file), Order, ...
      audio/DownTheRabbitHoleFinal_SoundFile1.wav ... SoundFile12.wav
      easycapM10-acti61_elec.sfp     electrode positions of the 61-channel actiCAP (M10 layout)
      datasets.mat                   (optional) ``use``: the 33 datasets analysed in the paper

Where each sound starts in the recording. ``raw`` holds one continuous trial and no event
list; the authors' word epochs are ``proc.trl``, a FieldTrip trial definition with one row
per word: ``begsample, endsample, offset`` then the columns named by ``proc.varnames``
(``segment``, ``tmin``, ``Order``; S02's ``trl`` holds one more unnamed column, so the names
are matched to the last columns). A row's time zero, the word onset, is sample ``begsample -
offset`` (1-based, as ``raw.sampleinfo`` starts at 1) and ``tmin`` is that word's onset in its
sound file (the csv's ``onset``), so the sound file started at ``(begsample - offset - 1) /
500 - tmin`` seconds on the recording's time axis. The rows of one sound file must agree on
that start within 1.5 samples, and it is rounded to the sample; every word of the csv in that
sound file is then heard at start + onset. A sound file is identified by the ``tmin`` values
of its rows, which must all be onsets of one csv segment: Eelbrain's import of this dataset
notes that for S26, S34, S35 and S36 the first trigger is missing and the segment labels are
shifted by one, so a label whose onsets belong to another segment is corrected (logged).

Recordings without ``proc/Sxx.mat`` (7 of 49) cannot be aligned and are skipped (logged);
naming one in ``subjects`` is an error. See docs/recipes-eeg.md for the options and the
choices made.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neurodec.errors import ConfigError, InputFileError
from neurodec.io.recipes._common import EEG_PICKS, EEG_PREPROCESSING, as_list, check_choice, ingest_options, read_mat
from neurodec.io.recipes._speech import (
    OUTSIDE_POLICIES,
    HeardWords,
    SpeechRecording,
    segment_options,
    write_speech_store,
)
from neurodec.io.speech import DEFAULT_SHIFT, DEFAULT_TMAX, DEFAULT_TMIN, SoundFile, read_sound_file

logger = logging.getLogger("neurodec")

NAME = "brennan2019"
CONVERTER = "neurodec.io.recipes.brennan2019"
#: The sampling rate the release states (README: "500 Hz (0.1 to 200 Hz band)").
STATED_SFREQ = 500.0
WORDS_FILE = "AliceChapterOne-EEG.csv"
SOUND_FILE = "audio/DownTheRabbitHoleFinal_SoundFile{segment}.wav"
MONTAGE_FILE = "easycapM10-acti61_elec.sfp"
SUBSETS_FILE = "datasets.mat"
#: EOG channels; the other non-scalp channels (AUD, Aux5: the audio the amplifier recorded) are misc.
EOG_CHANNELS = ("VEOG", "HEOG")
#: Default preprocessing (docs/recipes-eeg.md): 0.5-40 Hz band-pass, then 120 Hz (Défossez et al.), polyphase.
DEFAULT_PREPROCESSING = EEG_PREPROCESSING
DEFAULT_PICKS = EEG_PICKS
#: How far apart (s) a trl row's onset may be from the csv's onset of the same word.
ONSET_TOLERANCE = 0.0015
_UNIT_SCALE = {"uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "mv": 1e-3, "v": 1.0, "nv": 1e-9}


# ------------------------------------------------------------------ the study's files
def read_words_table(path: Path):
    """``AliceChapterOne-EEG.csv`` as a DataFrame (Word, Segment, onset, ... as published)."""
    import pandas as pd

    if not path.is_file():
        raise InputFileError(f"word table {path} does not exist (the release's {WORDS_FILE})")
    try:
        table = pd.read_csv(path)
    except Exception as error:
        raise InputFileError(f"{path}: not a readable csv file ({error})") from None
    missing = [column for column in ("Word", "Segment", "onset") if column not in table.columns]
    if missing:
        raise InputFileError(f"{path}: columns {missing} are missing; found {list(table.columns)}")
    if table[["Segment", "onset"]].isna().any().any():
        raise InputFileError(f"{path}: empty Segment or onset cells")
    table["Segment"] = table["Segment"].astype(int)
    return table


def read_positions(path: Path) -> dict[str, np.ndarray]:
    """Electrode positions (head frame, metres) of an ``.sfp`` file, as MNE reads it
    (``read_custom_montage``: scaled to a 9.5 cm head radius)."""
    import mne

    if not path.is_file():
        raise InputFileError(
            f"electrode positions file {path} does not exist; it is the release's {MONTAGE_FILE} (the "
            f"actiCAP numbering differs from MNE's 'easycap-M10' template, so no template stands in for it); "
            f"pass montage=PATH if it lies elsewhere"
        )
    try:
        montage = mne.channels.read_custom_montage(path)
    except Exception as error:
        raise InputFileError(f"{path}: not a readable electrode positions file ({error})") from None
    return {str(name): np.asarray(position, dtype=np.float64)
            for name, position in montage.get_positions()["ch_pos"].items()}


def sound_starts(trl: np.ndarray, varnames: Sequence[str], words, sfreq: float, where: str) -> dict[int, float]:
    """When each sound file started on the recording's time axis (s), from ``proc.trl``.

    ``words`` is the csv table; the result maps the csv's segment number to the start,
    rounded to the sample. See the module docstring for the reasoning.

    >>> import pandas as pd
    >>> words = pd.DataFrame({"Segment": [1, 1, 2], "onset": [0.5, 1.25, 0.3], "Word": ["a", "b", "c"]})
    >>> trl = np.array([[1201, 1600, -50, 1, 0.5, 1], [1576, 1975, -50, 1, 1.25, 2], [9101, 9500, -50, 2, 0.3, 3]])
    >>> sound_starts(trl, ["segment", "tmin", "Order"], words, 500.0, "S01")
    {1: 2.0, 2: 18.0}
    """
    trl = np.atleast_2d(np.asarray(trl, dtype=np.float64))
    names = [str(name) for name in varnames]
    if trl.shape[1] < 3 + len(names):
        raise InputFileError(f"{where}: proc.trl has {trl.shape[1]} columns, expected begsample, endsample, offset "
                             f"and the {len(names)} named by proc.varnames {names}")
    missing = [name for name in ("segment", "tmin") if name not in names]
    if missing:
        raise InputFileError(f"{where}: proc.varnames {names} lack {missing}; cannot place the sound files")
    # The names label the last columns (S02's trl holds an extra column before them).
    named = trl[:, trl.shape[1] - len(names):]
    label = named[:, names.index("segment")].astype(int)
    onset_in_sound = named[:, names.index("tmin")]
    zero_time = (trl[:, 0] - trl[:, 2] - 1) / sfreq
    onsets_of = {int(k): np.sort(group["onset"].to_numpy(dtype=np.float64)) for k, group in words.groupby("Segment")}

    def holds(segment: int, onsets: np.ndarray) -> bool:
        known = onsets_of[segment]
        after = np.clip(np.searchsorted(known, onsets), 0, len(known) - 1)
        before = np.clip(after - 1, 0, len(known) - 1)
        distance = np.minimum(np.abs(known[after] - onsets), np.abs(known[before] - onsets))
        return bool(np.all(distance <= ONSET_TOLERANCE))

    starts: dict[int, float] = {}
    for value in np.unique(label).tolist():
        rows = label == value
        candidates = [segment for segment in onsets_of if holds(segment, onset_in_sound[rows])]
        if value in candidates:
            segment = value
        elif len(candidates) == 1:
            segment = candidates[0]
            logger.warning("%s: the proc.trl rows labelled segment %d hold the word onsets of sound file %d; "
                           "they are taken as sound file %d (a shifted label)", where, value, segment, segment)
        else:
            raise InputFileError(
                f"{where}: the proc.trl rows labelled segment {value} (onsets {onset_in_sound[rows][:3].tolist()} ...) "
                f"match {'no' if not candidates else 'several'} segment(s) of {WORDS_FILE} {candidates}; expected "
                f"their 'tmin' to be word onsets of one sound file"
            )
        if segment in starts:
            raise InputFileError(f"{where}: two segment labels of proc.trl both hold sound file {segment}")
        estimates = zero_time[rows] - onset_in_sound[rows]
        spread = float(estimates.max() - estimates.min())
        if spread > 1.5 / sfreq:
            raise InputFileError(
                f"{where}: the proc.trl rows of sound file {segment} disagree on when it started by "
                f"{spread * 1000:.1f} ms (expected within 1.5 samples): begsample - offset - tmin is not constant"
            )
        starts[segment] = round(float(np.median(estimates)) * sfreq) / sfreq
    return dict(sorted(starts.items()))


def read_fieldtrip_raw(path: Path, positions: Mapping[str, np.ndarray], *, sfreq: float = STATED_SFREQ,
                       bads: Sequence[str] = ()):
    """A release ``Sxx.mat`` (FieldTrip ``raw``) as an MNE RawArray in volts with positions.

    Channels named in ``positions`` are EEG, ``VEOG`` is EOG, others (``AUD``, ``Aux5``: the
    audio the amplifier recorded) are ``misc``. The data must be one continuous trial at
    ``sfreq`` Hz whose time axis steps by ``1 / sfreq``.
    """
    import mne

    struct = read_mat(path, ["raw"], "FieldTrip data file")["raw"]
    if not isinstance(struct, dict):
        raise InputFileError(f"{path}: variable 'raw' is not a FieldTrip structure")
    missing = [field for field in ("trial", "label", "fsample") if field not in struct]
    if missing:
        raise InputFileError(f"{path}: the FieldTrip structure 'raw' lacks {missing}; found {sorted(struct)}")
    found_sfreq = float(np.asarray(struct["fsample"]).ravel()[0])
    if abs(found_sfreq - sfreq) > 1e-6:
        raise InputFileError(f"{path}: raw.fsample is {found_sfreq:g} Hz; the study states {sfreq:g} Hz for every "
                             f"recording (a different rate means another version of the file)")
    trial = struct["trial"]
    if not (isinstance(trial, np.ndarray) and trial.dtype != object and trial.ndim == 2):
        count = len(trial) if isinstance(trial, (list, np.ndarray)) else "?"
        raise InputFileError(f"{path}: raw.trial holds {count} trials; expected one continuous trial")
    labels = [str(name) for name in as_list(struct["label"])]
    if trial.shape[0] != len(labels):
        raise InputFileError(f"{path}: raw.trial has {trial.shape[0]} channels but raw.label names {len(labels)}")
    if "time" in struct:
        times = np.asarray(struct["time"], dtype=np.float64).ravel()
        steps = np.diff(times)
        if len(times) != trial.shape[1] or (len(steps) and np.max(np.abs(steps - 1.0 / sfreq)) > 1e-3 / sfreq):
            raise InputFileError(f"{path}: raw.time does not step by 1/fsample = {1.0 / sfreq:g} s over the "
                                 f"{trial.shape[1]} samples; expected one regularly sampled continuous trial")
    units = as_list(struct.get("hdr", {}).get("chanunit")) if isinstance(struct.get("hdr"), dict) else []
    # The release's header says 'uV' for every channel; files without it are taken as microvolts too.
    scale = np.full(len(labels), 1e-6)
    if len(units) == len(labels):
        unknown = sorted({str(u) for u in units if str(u).lower() not in _UNIT_SCALE})
        if unknown:
            raise InputFileError(f"{path}: raw.hdr.chanunit holds units {unknown}; expected uV, mV or V")
        scale = np.asarray([_UNIT_SCALE[str(u).lower()] for u in units])
    types = ["eeg" if name in positions else "eog" if name in EOG_CHANNELS else "misc" for name in labels]
    info = mne.create_info(labels, sfreq, types, verbose="error")
    raw = mne.io.RawArray(np.asarray(trial, dtype=np.float64) * scale[:, None], info, verbose="error")
    scalp = [name for name, kind in zip(labels, types) if kind == "eeg"]
    montage = mne.channels.make_dig_montage(ch_pos={name: positions[name] for name in scalp}, coord_frame="head")
    raw.set_montage(montage, on_missing="ignore", verbose="error")
    raw.info["bads"] = [name for name in bads if name in labels]
    return raw


def _subject_label(value: Any) -> str:
    text = str(value).strip()
    text = text[:-4] if text.lower().endswith(".mat") else text
    digits = text[1:] if text[:1] in ("S", "s") else text
    if not digits.isdigit():
        raise ConfigError(f"subjects: {value!r} is not a dataset of the release (expected S01 ... S49 or 1 ... 49)")
    return f"S{int(digits):02d}"


def _subjects(source: Path, subjects: Any) -> list[str]:
    if subjects is None:
        present = sorted(path.stem for path in source.glob("S[0-9][0-9].mat"))
        if not present:
            raise InputFileError(f"{source}: no S01.mat ... S49.mat files; is this the unpacked Deep Blue release?")
        aligned = [name for name in present if (source / "proc" / f"{name}.mat").is_file()]
        skipped = sorted(set(present) - set(aligned))
        if skipped:
            logger.warning("%s: %d datasets have no proc/Sxx.mat (the authors did not preprocess them) and cannot "
                           "be aligned to the sounds; skipped: %s", NAME, len(skipped), skipped)
        if not aligned:
            raise InputFileError(f"{source}: none of {present} has its proc/Sxx.mat (unpack proc.zip in place)")
        return aligned
    if not isinstance(subjects, str) and len(subjects) == 1 and str(subjects[0]).strip().lower() == "use":
        subjects = str(subjects[0])  # the command line gives lists: --subjects use
    if isinstance(subjects, str) and subjects.strip().lower() == "use":
        path = source / SUBSETS_FILE
        use = read_mat(path, ["use"], "dataset list")["use"]
        return sorted({_subject_label(str(entry)[:3]) for entry in as_list(use)})
    if isinstance(subjects, str):
        subjects = [part for part in subjects.split(",") if part.strip()]
    return sorted({_subject_label(entry) for entry in subjects})


# ------------------------------------------------------------------ the recipe
def convert(
    source: str | Path,
    out: str | Path,
    *,
    subjects: Sequence[str] | str | None = None,
    overwrite: bool = False,
    preprocessing: Mapping[str, Any] | None = DEFAULT_PREPROCESSING,
    picks: Sequence[str] | str | None = DEFAULT_PICKS,
    montage: str | Path | None = None,
    mark_bads: bool = True,
    on_outside: str = "error",
    tmin: float = DEFAULT_TMIN,
    tmax: float = DEFAULT_TMAX,
    shift: float = DEFAULT_SHIFT,
    block_duration: float = 30.0,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Convert the Brennan & Hale 2019 release at ``source`` into a store at ``out``.

    ``subjects``: dataset names (``"S01"``, ``"1"``), ``"use"`` for the 33 of the paper
    (``datasets.mat``), or None for every dataset with its ``proc/Sxx.mat``. Each becomes
    one continuous recording (subject ``Sxx``, session and run ``01``, task ``alice``)
    with one event per heard word. ``preprocessing`` holds
    :class:`~neurodec.io.options.PreprocessingOptions` fields laid over the default (0.5-40 Hz
    band-pass, then polyphase resampling to 120 Hz; ``{"bandpass": None}`` drops the band-pass;
    ``None``: the native 500 Hz, unfiltered); ``picks`` keeps channel types or
    names (the 60 scalp channels by default; ``None`` keeps VEOG and the audio channel too).
    ``montage`` replaces ``SOURCE/easycapM10-acti61_elec.sfp``; ``mark_bads`` marks the
    channels of ``proc.rejections.badchans`` as bad. ``on_outside``: ``"error"`` or
    ``"drop"`` for words heard after the recording stopped; words so near its end that their
    brain window runs past it are always left out (both counted in each recording's info). The segment options go to
    :func:`neurodec.io.speech.make_segments`. Returns the written Study.

    >>> from neurodec.io.recipes import convert
    >>> study = convert("brennan2019", "/data/alice", "brennan2019.zarr", subjects="use")  # doctest: +SKIP
    """
    source = Path(source)
    if not source.is_dir():
        raise InputFileError(f"{source}: not a folder; expected the unpacked Deep Blue release of {NAME}")
    check_choice(on_outside, "on_outside", OUTSIDE_POLICIES)
    options = ingest_options(preprocessing, picks, defaults=EEG_PREPROCESSING, modality="eeg")
    segments = segment_options(tmin, tmax, shift, block_duration, test_fraction, seed)
    words = read_words_table(source / WORDS_FILE)
    positions = read_positions(Path(montage) if montage is not None else source / MONTAGE_FILE)

    from neurodec.io._files import describe_source

    recordings: list[SpeechRecording] = []
    sounds: dict[str, SoundFile] = {}
    for subject in _subjects(source, subjects):
        data_file, proc_file = source / f"{subject}.mat", source / "proc" / f"{subject}.mat"
        if not data_file.is_file():
            raise InputFileError(f"{NAME}: data file {data_file} does not exist")
        proc = read_mat(proc_file, ["proc"], "preprocessing parameters file (from proc.zip)")["proc"]
        if not isinstance(proc, dict) or "trl" not in proc or "varnames" not in proc:
            raise InputFileError(f"{proc_file}: variable 'proc' lacks the fields 'trl' and 'varnames'")
        starts = sound_starts(proc["trl"], [str(v) for v in as_list(proc["varnames"])], words, STATED_SFREQ,
                              str(proc_file))
        heard = HeardWords()
        for segment, start in starts.items():
            sound_path = source / SOUND_FILE.format(segment=segment)
            if sound_path.stem not in sounds:
                sounds[sound_path.stem] = read_sound_file(sound_path.resolve())
            for row in words[words["Segment"] == segment].itertuples(index=False):
                heard.add(sound_path.stem, float(row.onset), start + float(row.onset), str(row.Word))
        bads = []
        if mark_bads and isinstance(proc.get("rejections"), dict):
            bads = [str(name) for name in as_list(proc["rejections"].get("badchans"))]
        recordings.append(SpeechRecording(
            subject=subject, session="01", run="01", task="alice", words=heard,
            read_raw=partial(read_fieldtrip_raw, data_file, positions, bads=bads),
            source=describe_source(data_file, "FieldTrip raw structure (MATLAB)", extra_companions=[proc_file]),
            info_extra={"sound_starts": {str(k): v for k, v in starts.items()}}, path=data_file,
        ))
    parameters = {"source": str(source.resolve()), "subjects": [r.subject for r in recordings],
                  "montage": str(Path(montage) if montage is not None else MONTAGE_FILE), "mark_bads": mark_bads,
                  "alignment": "proc.trl: (begsample - offset - 1) / fsample - tmin"}
    return write_speech_store(out, recordings, sounds, converter=CONVERTER, options=options, segment_options=segments,
                              parameters=parameters, overwrite=overwrite, on_outside=on_outside)


__all__ = ["CONVERTER", "DEFAULT_PICKS", "DEFAULT_PREPROCESSING", "convert", "read_fieldtrip_raw", "sound_starts"]
