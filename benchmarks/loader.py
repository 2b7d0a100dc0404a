"""How fast do training batches come out of a study store?

Builds (once; later runs reuse it) a store of random EEG-shaped trials, then reads batches
of random trials through ``TrialDataset.loader`` and prints trials per second for:

* cold: the first epoch with an empty disk cache (every zarr chunk is decoded once and
  written to the cache);
* warm: later epochs, served from the disk cache (median of ``--epochs``);
* memmap: the same batches, in the same order, indexed from a plain numpy memmap of the
  same trials through the same DataLoader (median of ``--epochs``): the speed of reading
  decompressed floats;
* zarr, no cache: one epoch read straight from zarr with the chunk-aware sampler.

The warm/memmap ratio (median over epochs of the ratio of two adjacent epochs) should be at
least 0.8. Run::

    python benchmarks/loader.py                     # store in benchmarks/output/loader/
    python benchmarks/loader.py --dir /fast/disk --trials 40000

"Cold" means that the cache is empty, not that the operating system's page cache is: the
store was just written or read, so this measures decoding and cache writing, not the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from neurodec.data import ChunkAwareBatchSampler, TrialDataset  # noqa: E402
from neurodec.store import RecordingData, StoreWriter, event_table, open_store, stimulus_table  # noqa: E402


def recording_trials(index: int, n_trials: int, n_channels: int, n_times: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + index)
    return rng.standard_normal((n_trials, n_channels, n_times), dtype=np.float32)


def build(
    folder: Path, n_trials: int, n_recordings: int, n_channels: int, n_times: int, n_stimuli: int
) -> tuple[Path, Path]:
    """The store and a .npy of the same trials in dataset order, built once per parameter set."""
    name = f"eeg-{n_trials}x{n_channels}x{n_times}-{n_recordings}rec"
    store_path, baseline_path = folder / f"{name}.zarr", folder / f"{name}.npy"
    if store_path.exists() and baseline_path.exists():
        return store_path, baseline_path
    folder.mkdir(parents=True, exist_ok=True)
    per_recording = np.array_split(np.arange(n_trials), n_recordings)
    ids = [f"image-{i:05d}" for i in range(n_stimuli)]
    baseline = np.lib.format.open_memmap(
        baseline_path, mode="w+", dtype=np.float32, shape=(n_trials, n_channels, n_times)
    )
    started = time.perf_counter()
    with StoreWriter(store_path, name="loader benchmark", overwrite=True) as writer:
        writer.set_stimuli(stimulus_table(ids, "image", split=["train"] * n_stimuli))
        for index, rows in enumerate(per_recording):
            data = recording_trials(index, len(rows), n_channels, n_times)
            stimuli = np.random.default_rng(index).integers(0, n_stimuli, len(rows))
            writer.add_recording(
                RecordingData(
                    subject=f"{index + 1:02d}",
                    modality="eeg",
                    layout="epoched",
                    data=data,
                    events=event_table([ids[s] for s in stimuli]),
                    sfreq=250.0,
                    tmin=-0.2,
                    ch_names=[f"E{c}" for c in range(n_channels)],
                    ch_types=["eeg"] * n_channels,
                    units=["V"] * n_channels,
                )
            )
            baseline[rows] = data
    baseline.flush()
    del baseline
    print(f"built {store_path.name} in {time.perf_counter() - started:.1f} s")
    return store_path, baseline_path


def epoch_batches(n_items: int, batch_size: int, epoch: int) -> list[list[int]]:
    """Batches of random trials, each sorted (as ChunkAwareBatchSampler gives them)."""
    order = np.random.default_rng([7, epoch]).permutation(n_items)
    return [np.sort(order[i : i + batch_size]).tolist() for i in range(0, n_items, batch_size)]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir", type=Path, default=HERE / "output" / "loader", help="where the store is built and reused"
    )
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--times", type=int, default=250)
    parser.add_argument("--stimuli", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=7, help="warm and memmap epochs (medians are reported)")
    args = parser.parse_args(argv)

    store_path, baseline_path = build(args.dir, args.trials, args.recordings, args.channels, args.times, args.stimuli)
    cache_dir = args.dir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    study = open_store(store_path)
    dataset = TrialDataset(study, cache_dir=cache_dir)
    n = len(dataset)
    baseline = np.load(baseline_path, mmap_mode="r")
    assert baseline.shape[0] == n

    import torch

    class MemmapTrials(torch.utils.data.Dataset):
        """The baseline: the same trials in one plain numpy memmap, read by fancy indexing."""

        def __len__(self):
            return n

        def __getitem__(self, batch):
            return {"brain": torch.from_numpy(baseline[batch])}

    def through_loader(source, batches):
        # The path a training loop takes: a DataLoader over whole batches, one read per batch.
        loader = torch.utils.data.DataLoader(source, batch_size=None, sampler=batches, collate_fn=lambda b: b)
        return (batch["brain"] for batch in loader)

    def count(iterator) -> float:
        started = time.perf_counter()
        total = sum(int(brain.shape[0]) for brain in iterator)
        return total / (time.perf_counter() - started)

    results: dict[str, float] = {}
    results["cold"] = count(through_loader(dataset, epoch_batches(n, args.batch_size, 0)))
    chunks_decoded = sum(reader.chunks_decoded for reader in dataset._readers)
    warm, memmap = [], []
    for epoch in range(1, args.epochs + 1):
        # Alternate the two, so that a busy machine slows both alike; compare epoch by epoch.
        batches = epoch_batches(n, args.batch_size, epoch)
        warm.append(count(through_loader(dataset, batches)))
        memmap.append(count(through_loader(MemmapTrials(), batches)))
    results["warm"] = statistics.median(warm)
    results["memmap"] = statistics.median(memmap)
    results["warm/memmap"] = statistics.median([w / m for w, m in zip(warm, memmap)])

    direct = TrialDataset(study)  # no cache: every epoch decodes from zarr
    sampler = ChunkAwareBatchSampler(direct, args.batch_size, seed=0)
    loader = torch.utils.data.DataLoader(direct, batch_size=None, sampler=sampler, collate_fn=lambda b: b)
    results["zarr, chunk-aware, no cache"] = count(batch["brain"] for batch in loader)  # one epoch
    n_chunks = sum(-(-r.layout.n_rows // r.layout.chunk_rows) for r in direct._readers)
    decoded_direct = sum(r.chunks_decoded for r in direct._readers)

    mb = args.channels * args.times * 4 / 1e6
    print(
        f"store {store_path} ({n} trials of {args.channels} x {args.times} float32, {n * mb / 1e3:.2f} GB), "
        f"batches of {args.batch_size} random trials"
    )
    for name, value in results.items():
        if name == "warm/memmap":
            print(f"  {name:30s} {value:8.2f}")
        else:
            print(f"  {name:30s} {value:8.0f} trials/s  ({value * mb:6.0f} MB/s)")
    print(f"  chunks decoded: cold epoch {chunks_decoded} of {n_chunks}; zarr chunk-aware epoch {decoded_direct}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
