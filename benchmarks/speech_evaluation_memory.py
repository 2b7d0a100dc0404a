"""Peak memory of speech segment retrieval in `neurodec evaluate`: every prediction at once
(the path before streaming) against predictions made and ranked a chunk at a time.

Each measurement runs in a fresh process and reports its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) less the resident memory after imports and
after building the candidates, so it counts what the ranking path itself holds. The
"encoder" is a fixed random projection of each query's segment target plus noise, made
per chunk (as an encoder's forward pass makes a chunk of predictions).

    .venv/bin/python benchmarks/speech_evaluation_memory.py                    # 3 repeats each
    .venv/bin/python benchmarks/speech_evaluation_memory.py --queries 3000 --features 64 --times 320
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure(path: str, queries: int, features: int, times: int, segments: int, chunk: int) -> dict:
    import numpy as np

    from neurodec.metrics.speech import SegmentRanks, segment_ranks, segment_retrieval, summarize_segment_ranks

    rng = np.random.default_rng(0)
    candidates = rng.standard_normal((segments, features, times), dtype=np.float32)
    segment_of = rng.integers(0, segments, queries)
    words = rng.choice(["the", "of", "and", "to", "a", "in"], size=segments)
    subjects = np.repeat([f"{s:02d}" for s in range(6)], -(-queries // 6))[:queries]

    def predictions(rows):
        # Each query's noise from its own seed: the same predictions whatever the chunks.
        noise = np.stack([np.random.default_rng(int(row)).standard_normal((features, times), dtype=np.float32)
                          for row in rows])
        noise += 0.3 * candidates[segment_of[rows]]
        return noise

    base = _rss_mb()
    start = time.perf_counter()
    if path == "old":
        brain = predictions(np.arange(queries))               # every prediction at once
        targets = candidates[segment_of]                         # the per-query copy of the targets
        result = segment_retrieval(brain, candidates, segment_of, words=words, subjects=subjects, n_bootstrap=100)
        del targets
    else:
        parts = [segment_ranks(predictions(np.arange(s, min(s + chunk, queries))), candidates,
                               segment_of[s:s + chunk], words=words) for s in range(0, queries, chunk)]
        result = summarize_segment_ranks(SegmentRanks.concatenate(parts), subjects=subjects, n_bootstrap=100)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "peak_above_inputs_mb": peak - base, "seconds": seconds,
            "pooled": result["pooled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--times", type=int, default=320)
    parser.add_argument("--segments", type=int, default=600)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=["old", "streamed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.queries, args.features, args.times, args.segments, args.chunk)
    if args.one:
        print(json.dumps(measure(args.one, *sizes)))
        return
    runs: dict[str, list[dict]] = {"old": [], "streamed": []}
    for _ in range(args.repeats):
        for path in runs:
            output = subprocess.run([sys.executable, __file__, "--one", path, "--queries", str(args.queries),
                                     "--features", str(args.features), "--times", str(args.times),
                                     "--segments", str(args.segments), "--chunk", str(args.chunk)],
                                    check=True, capture_output=True, text=True).stdout
            runs[path].append(json.loads(output.strip().splitlines()[-1]))
    assert runs["old"][0]["pooled"] == runs["streamed"][0]["pooled"], "the two paths disagree"
    print(f"{args.queries} queries x {args.features} features x {args.times} times "
          f"({args.queries * args.features * args.times * 4 / 2**20:.0f} MB of predictions), {args.segments} segments, "
          f"chunks of {args.chunk}; median of {args.repeats}")
    for path, records in runs.items():
        print(f"{path:>9}: peak {statistics.median(r['peak_above_inputs_mb'] for r in records):8.1f} MB above inputs, "
              f"{statistics.median(r['seconds'] for r in records):6.1f} s")
    print("pooled:", runs["streamed"][0]["pooled"])


if __name__ == "__main__":
    main()
