"""MEG -> speech, end to end: which 3 s speech segment was a person hearing?

    .venv/bin/python pipelines/meg_speech.py --out .neurodec/pipelines --size tiny
    .venv/bin/python pipelines/meg_speech.py --store meg-masc.zarr --out runs   # a converted study

The steps, as Défossez et al. (2023) decode speech: a speech store (the demo's auditory part,
simulated, unless --store names one, e.g. made by `neurodec convert meg-masc`), mel-spectrogram
targets of every segment, the brainmagick encoder of configs/demo/speech-meg.yaml trained with
the CLIP loss over time-resolved features, segment retrieval on the held-out test blocks
(segment top-1 / top-10 and word top-10 against chance), and one test window decoded by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import neurodec
from neurodec.report import format_speech_summary
from neurodec.simulate.speech import DEMO_SPEECH_TARGET

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "speech-meg.yaml"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".neurodec/pipelines"))
    parser.add_argument("--size", choices=["tiny", "default"], default="tiny", help="size of the simulated store")
    parser.add_argument("--store", help="an existing speech store to use instead of simulating one")
    args = parser.parse_args(argv)

    # 1. A speech store: one stimulus per word onset, test blocks held out, sounds inside.
    store = args.store or args.out / f"speech-{args.size}.zarr"
    study = neurodec.open_store(store) if args.store else neurodec.simulate_speech(store, size=args.size, reuse=True,
                                                                                    overwrite=True)[0]
    # 2. Targets: each segment's log-mel spectrogram (20 bands at 40 Hz over 3 s), cached in the store.
    extractor, config = DEMO_SPEECH_TARGET
    neurodec.embed(study, extractor, dict(config), key="mel")

    # 3. The brainmagick encoder (spatial attention, subject layers, dilated convolutions).
    overrides = [f"data.store={store}", f"output.runs_dir={args.out / 'runs'}", "output.name=meg-speech"]
    if args.size == "tiny" and not args.store:
        overrides += ["train.epochs=null", "train.max_steps=20", "train.batch_size=32", "data.cache_dir=null",
                      "optim.warmup_steps=5"]
    run_dir = neurodec.train(CONFIG, overrides=overrides).run_dir

    # 4. Segment retrieval on the test blocks: every test window against every test segment.
    results = neurodec.evaluate(run_dir, n_ways=(), n_permutations=0, n_bootstrap=200)
    print(format_speech_summary(results))
    print(f"report: {run_dir / 'report' / 'report.html'}")

    # 5. By hand: cut subject 01's window around one test word and rank the test segments for it.
    encoder = neurodec.load_encoder(run_dir)
    window = encoder.config.data.window
    study = neurodec.open_store(store)  # opened again: it now holds the targets
    recording = study.recordings(subject="01", modality="meg")[0]
    test_ids = study.stimuli["id"][study.stimuli["split"] == "test"]
    event = np.flatnonzero(np.isin(recording.events["stimulus_id"], test_ids))[0]
    start = int(recording.events["sample"][event]) + round((window.tmin + window.shift) * recording.sfreq)
    brain = np.asarray(recording.data[:, start: start + round((window.tmax - window.tmin) * recording.sfreq)])
    prediction = encoder.embed(brain[None], subject="01")
    ranked = neurodec.retrieve(prediction, study.targets("mel"), k=10, candidate_ids=test_ids).ids[0].tolist()
    heard = str(recording.events["stimulus_id"][event])
    rank = f"rank {ranked.index(heard) + 1}" if heard in ranked else "not in the best 10"
    print(f"heard {heard} ('{recording.events['value'][event]}'), {rank} of {len(test_ids)}; best 3: {ranked[:3]}")
    return {"run_dir": run_dir, "results": results, "heard": heard, "ranked": ranked}


if __name__ == "__main__":
    main()
