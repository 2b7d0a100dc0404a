"""Brain -> image, end to end on the demo cohort: the steps shared by eeg_image.py and fmri_image.py.

cohort -> EfficientNet-Lite0 targets -> brain encoder -> image decoder -> reconstructions ->
retrieval and image metrics -> a BrainToImagePipeline saved and reloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import neurodec
from neurodec.report import format_image_summary, format_summary_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
TARGET = "efficientnet-lite0"
# --fast: a tiny decoder and a few steps, to see every stage run in about a minute.
FAST_DECODER = {"image_size": 32, "sample_size": 16, "block_out_channels": [16, 32], "attention_levels": [False, True],
                "norm_num_groups": 8, "cross_attention_dim": 32, "training_steps": 40, "num_inference_steps": 5}


def run(modality: str, argv: list[str] | None = None, description: str = "") -> dict:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".neurodec/pipelines"))
    parser.add_argument("--size", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--fast", action="store_true", help="tiny decoder, few training steps")
    args = parser.parse_args(argv)

    # 1. The demo cohort (simulated, never downloaded) and its pretrained image targets.
    store = args.out / f"demo-{args.size}.zarr"
    study = neurodec.open_store(store) if store.exists() else neurodec.simulate_cohort(store, size=args.size)[0]
    neurodec.embed(study, "image_pretrained_cnn", key=TARGET)

    # 2. A brain encoder for this modality (configs/demo/<modality>.yaml).
    overrides = [f"data.store={store}", f"output.runs_dir={args.out / 'runs'}", f"output.name={modality}-image"]
    if args.size == "tiny" or args.fast:
        overrides += ["train.epochs=null", "train.max_steps=20", "train.batch_size=16", "train.selection_metric=val/loss",
                      "data.cache_dir=null"]
    run_dir = neurodec.train(CONFIGS / f"{modality}.yaml", overrides=overrides).run_dir

    # 3. An image decoder trained on the training stimuli only (embedding -> image).
    decoder = args.out / "decoder"
    config = FAST_DECODER if args.fast else CONFIGS / "decoder.yaml"
    neurodec.train_decoder(study, TARGET, decoder, config=config)

    # 4. Reconstruct the test images, then score retrieval and images in one report.
    reconstructions = neurodec.reconstruct(run_dir, decoder=str(decoder))
    results = neurodec.evaluate(run_dir, n_permutations=0, n_bootstrap=200)
    print(format_summary_table(results))
    print(format_image_summary(results["reconstruction"]))
    print(f"report: {run_dir / 'report' / 'report.html'}; grid: {reconstructions.folder / 'grid.png'}")

    # 5. The same components as one pipeline: raw trials of one subject in, images out.
    pipe = neurodec.BrainToImagePipeline.from_run(run_dir, decoder,
                                                  low_level=reconstructions.folder / "low_level")
    recording = study.recordings(subject="01", modality=modality)[0]
    trials = np.asarray(recording.data[:4])
    images = pipe(trials, subject="01", seeds=[0, 1, 2, 3]).images
    saved = pipe.save_pretrained(args.out / f"{modality}-pipeline")
    reloaded = neurodec.BrainToImagePipeline.from_pretrained(saved)(trials, subject="01", seeds=[0, 1, 2, 3]).images
    return {"run_dir": run_dir, "results": results, "reconstructions": reconstructions, "pipeline_images": images,
            "reloaded_images": reloaded}
