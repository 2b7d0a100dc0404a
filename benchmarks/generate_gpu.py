"""Images per second of neurodec's tiny image pipelines on CUDA in fp16, batch 16.

    .venv/bin/python benchmarks/generate_gpu.py [--batch 16] [--steps 25] [--repeats 5]

The pipelines are the tiny configurations the tests build (neurodec.generate.tiny: a compact
ConditionalImageDecoder of about 1M UNet parameters, and unCLIP, Kandinsky 2.2 and IP-Adapter
SD 1.5 / SDXL built from tiny real diffusers and transformers classes). Their weights are
random: this measures the machinery (scheduler loop, guidance, VAE/MoVQ decoding, transfers),
not image quality. Each figure is the median of ``--repeats`` timed batches after one warm-up
batch, CUDA synchronised; the same pipelines on CPU in fp32 are timed in the same run for
comparison (``--no-cpu`` skips them). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(generate, repeats: int, device: str) -> float:
    generate()  # warm-up: kernels, allocator, cuDNN autotuning
    seconds = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        generate()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _compact(folder: Path, batch: int, steps: int, device: str, dtype):
    from neurodec.generate import ConditionalImageDecoder
    from neurodec.generate.tiny import build_compact_decoder

    path = build_compact_decoder(folder / "compact")
    decoder = ConditionalImageDecoder.from_pretrained(path, device=device).to(dtype=dtype)
    embeddings = np.random.default_rng(0).standard_normal((batch, *decoder.embedding_shape)).astype(np.float32)
    parameters = sum(p.numel() for p in decoder.unet.parameters())

    def generate():
        return decoder.generate(embeddings, num_inference_steps=steps, seeds=range(batch), batch_size=batch,
                                progress=False)

    return generate, f"compact decoder ({parameters / 1e6:.2f}M UNet parameters, {decoder.config.image_size} px)"


def _pretrained(kind: str, folder: Path, batch: int, steps: int, device: str, dtype):
    from neurodec.generate import load_generator
    from neurodec.generate.tiny import BUILDERS, IMAGE_EMBED_DIM

    path = folder / kind
    if not path.exists():
        torch.manual_seed(0)
        BUILDERS[kind](path)
    options = {"ip_adapter": path} if kind.startswith("ip-adapter") else {}
    generator = load_generator(kind, path, device=device, torch_dtype=dtype, **options)
    embeddings = np.random.default_rng(0).standard_normal((batch, IMAGE_EMBED_DIM)).astype(np.float32)

    def generate():
        return generator.generate(embeddings, num_inference_steps=steps, height=32, width=32, seeds=range(batch),
                                  batch_size=batch, progress=False)

    return generate, f"{kind} (tiny, 32 px)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cpu", action="store_true", help="time CUDA fp16 only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("generate_gpu.py: no CUDA device; this benchmark measures GPU generation")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; batch {args.batch}, "
          f"{args.steps} steps, median of {args.repeats}")
    settings = [("cuda", torch.float16)] + ([] if args.no_cpu else [("cpu", torch.float32)])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        builders = [lambda *a: _compact(folder, *a)] + [
            (lambda kind: lambda *a: _pretrained(kind, folder, *a))(kind)
            for kind in ("unclip", "kandinsky22", "ip-adapter-sd15", "ip-adapter-sdxl")]
        for build in builders:
            rates = {}
            for device, dtype in settings:
                try:
                    generate, name = build(args.batch, args.steps, device, dtype)
                    rates[device] = args.batch / _time(generate, args.repeats, device)
                except Exception as error:  # a pipeline that fails on this device is reported, not hidden
                    name = name if "name" in locals() else "pipeline"
                    rates[device] = f"failed: {type(error).__name__}: {error}"
            shown = {device: (f"{rate:8.1f} images/s" if isinstance(rate, float) else rate) for device, rate in rates.items()}
            ratio = (f"  (GPU fp16 / CPU fp32: {rates['cuda'] / rates['cpu']:.1f}x)"
                     if all(isinstance(rates.get(d), float) for d in ("cuda", "cpu")) else "")
            print(f"{name:<58} cuda fp16 {shown['cuda']}" + (f" | cpu fp32 {shown['cpu']}" if "cpu" in shown else "")
                  + ratio, flush=True)


if __name__ == "__main__":
    main()
