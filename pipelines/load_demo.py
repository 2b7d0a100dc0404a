"""Simulate a demo cohort, look at the store, and read leak-free training batches.

    .venv/bin/python pipelines/load_demo.py --out .neurodec/pipelines --size tiny

A walk through the first half of the data flow: native data (here, simulated) -> study
store -> PyTorch batches, with the split and the fitted transform a training run keeps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import neurodec
from neurodec.data import TrialDataset, split_stimuli
from neurodec.data.transforms import Clamp, Compose, RobustScaler


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".neurodec/pipelines"))
    parser.add_argument("--size", choices=["tiny", "default"], default="tiny")
    args = parser.parse_args(argv)

    # 1. The demo cohort: EEG, MEG and fMRI responses to real images, as a study store.
    store_path = args.out / f"demo-{args.size}.zarr"
    study = neurodec.open_store(store_path) if store_path.exists() else neurodec.simulate_cohort(store_path, size=args.size)[0]
    print(neurodec.info(study))

    # 2. Split by stimulus: test images never appear in training; validation comes from training.
    splits = split_stimuli(study, val_fraction=0.1, seed=0)
    print(f"\nstimuli: {len(splits.train)} train, {len(splits.val)} validation, {len(splits.test)} test")

    # 3. EEG trials of every subject; test trials of one image averaged over repetitions.
    train = TrialDataset(study, modality="eeg", **splits.selection("train"), cache_dir=args.out / "cache")
    test = TrialDataset(study, modality="eeg", **splits.selection("test"), average_repetitions=True)

    # 4. Scaling fitted on training trials only, saved next to the run that uses it.
    transform = Compose([RobustScaler(), Clamp(20.0)]).fit(train)
    transform.save(args.out / "transform")
    train.transform = test.transform = transform

    batch = next(iter(train.loader(batch_size=32, shuffle=True, seed=0)))
    print(f"training batch: brain {tuple(batch['brain'].shape)}, subjects {sorted(set(batch['subject'].tolist()))}")
    print(f"test set: {len(test)} averaged items of shape {tuple(test[0]['brain'].shape)}")
    return {
        "splits": splits,
        "batch_shape": tuple(batch["brain"].shape),
        "n_test_items": len(test),
        "largest_training_value": float(batch["brain"].abs().max()),
    }


if __name__ == "__main__":
    main()
