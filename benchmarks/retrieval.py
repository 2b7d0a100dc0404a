"""How fast, and in how much memory, does neurodec rank 100,000 queries against 100,000 candidates?

Makes 100,000 random "stimulus" embeddings (dim 768) and 100,000 noisy "brain" copies of
them, then, chunk by chunk through the library, measures:

* ranking: ``rank_of_true`` (the rank of the correct candidate of each query among all
  100,000 candidates, ties pessimistic) -> full-set top-1 and top-10 accuracy;
* top-k search: ``topk_chunked`` with k=10 (indices and scores of the 10 best candidates);
* a check: 200 random queries' top-10 against a plain numpy computation.

Peak memory is the process's maximum resident set size (``resource.getrusage``
``ru_maxrss``, this process having done nothing else), and per phase the maximum seen by a
psutil thread sampling every 20 ms. The embeddings alone take 2 x 100,000 x 768 x 4 B =
614 MB; one score block takes at most ``--block-mb`` (256 MiB by default).

Run::

    python benchmarks/retrieval.py                      # 100,000 x 100,000, dim 768
    python benchmarks/retrieval.py --n 20000 --slabs 4  # quicker
    python benchmarks/retrieval.py --device cuda        # on a GPU (also prints its peak allocation)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from neurodec.metrics import rank_of_true, topk_chunked  # noqa: E402

MB = 2**20


class PeakMemory:
    """Largest resident set size seen by a sampling thread while the block runs."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_embeddings(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ~ N(0, 1) and brain = targets + noise * N(0, 1), built row block by row block in float32."""
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((n, dim), dtype=np.float32)
    brain = rng.standard_normal((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        block = slice(start, start + 10_000)
        brain[block] *= noise
        brain[block] += targets[block]
    return brain, targets


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="queries and candidates (default 100000)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--noise", type=float, default=8.0, help="noise sd relative to the signal (default 8)")
    parser.add_argument("--block-mb", type=int, default=256, help="most MiB one score block may take")
    parser.add_argument("--slabs", type=int, default=10, help="progress lines per phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to compute: cpu (default) or cuda")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    block_bytes = args.block_mb * MB

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {psutil.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    brain, targets = make_embeddings(args.n, args.dim, args.noise, args.seed)
    print(f"embeddings: 2 x {args.n} x {args.dim} float32 = {2 * brain.nbytes / MB:.0f} MiB "
          f"in {time.perf_counter() - started:.1f} s; RSS {rss_mb():.0f} MiB", flush=True)

    slabs = np.array_split(np.arange(args.n), args.slabs)
    results: dict = {"n": args.n, "dim": args.dim, "k": args.k, "block_mb": args.block_mb,
                     "threads": torch.get_num_threads(), "device": args.device}
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        results["gpu"] = torch.cuda.get_device_name()
        # Copied once: the library would otherwise copy the candidates to the GPU on every call.
        brain_in, targets_in = torch.from_numpy(brain).to(args.device), torch.from_numpy(targets).to(args.device)
        torch.cuda.synchronize()
    else:
        brain_in, targets_in = brain, targets

    ranks = np.empty(args.n, dtype=np.int64)
    with PeakMemory() as ranking_memory:
        started = time.perf_counter()
        for number, slab in enumerate(slabs, 1):
            ranks[slab] = rank_of_true(brain_in[slab[0]:slab[-1] + 1], targets_in, slab, block_bytes=block_bytes)
            print(f"  ranking {number}/{args.slabs}: {slab[-1] + 1} queries, "
                  f"{time.perf_counter() - started:.0f} s, RSS {rss_mb():.0f} MiB", flush=True)
        ranking_seconds = time.perf_counter() - started
    results["ranking"] = {
        "seconds": ranking_seconds,
        "queries_per_second": args.n / ranking_seconds,
        "peak_rss_mb": ranking_memory.peak / MB,
        "top-1": float(np.mean(ranks <= 1)),
        f"top-{args.k}": float(np.mean(ranks <= args.k)),
    }
    print(f"ranking: {ranking_seconds:.1f} s ({args.n / ranking_seconds:.0f} queries/s), "
          f"peak RSS {ranking_memory.peak / MB:.0f} MiB; top-1 {np.mean(ranks <= 1):.3f}, "
          f"top-{args.k} {np.mean(ranks <= args.k):.3f}", flush=True)

    indices = np.empty((args.n, args.k), dtype=np.int64)
    scores = np.empty((args.n, args.k), dtype=np.float32)
    with PeakMemory() as topk_memory:
        started = time.perf_counter()
        for number, slab in enumerate(slabs, 1):
            best = topk_chunked(brain_in[slab[0]:slab[-1] + 1], targets_in, args.k, block_bytes=block_bytes)
            indices[slab], scores[slab] = best.indices, best.scores
            print(f"  top-{args.k} {number}/{args.slabs}: {slab[-1] + 1} queries, "
                  f"{time.perf_counter() - started:.0f} s, RSS {rss_mb():.0f} MiB", flush=True)
        topk_seconds = time.perf_counter() - started
    found = (indices == np.arange(args.n)[:, None]).any(axis=1).mean()
    results["topk"] = {"seconds": topk_seconds, "queries_per_second": args.n / topk_seconds,
                       "peak_rss_mb": topk_memory.peak / MB, f"true in top-{args.k}": float(found)}
    print(f"top-{args.k} search: {topk_seconds:.1f} s ({args.n / topk_seconds:.0f} queries/s), "
          f"peak RSS {topk_memory.peak / MB:.0f} MiB; true item in top-{args.k}: {found:.3f}", flush=True)

    # Independent check on a sample: plain numpy cosine over all candidates.
    sample = np.random.default_rng(1).choice(args.n, size=200, replace=False)
    normalised_targets_norms = np.linalg.norm(targets, axis=1)
    sample_brain = brain[sample] / np.linalg.norm(brain[sample], axis=1, keepdims=True)
    cosine = (sample_brain @ targets.T) / normalised_targets_norms
    reference_scores = -np.sort(-cosine, axis=1)[:, : args.k]
    reference_ranks = 1 + (cosine >= cosine[np.arange(200), sample][:, None] - 1e-6).sum(axis=1) - 1
    results["check"] = {
        "max_abs_score_difference": float(np.abs(reference_scores - scores[sample]).max()),
        "ranks_equal": int(np.sum(reference_ranks == ranks[sample])),
        "of": 200,
    }
    print(f"check on 200 queries against numpy: max |score difference| "
          f"{results['check']['max_abs_score_difference']:.2e}, ranks equal {results['check']['ranks_equal']}/200")

    results["process_peak_rss_mb"] = max_rss_mb()
    if on_gpu:
        results["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / MB
        print(f"GPU peak allocated: {results['gpu_peak_allocated_mb']:.0f} MiB")
    print(f"process peak RSS (ru_maxrss): {results['process_peak_rss_mb']:.0f} MiB "
          f"({'under' if results['process_peak_rss_mb'] < 2048 else 'OVER'} 2 GiB)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
