"""fMRI -> image, end to end on the demo cohort: train an encoder, decode test images, score them.

    .venv/bin/python pipelines/fmri_image.py --out .neurodec/pipelines --size tiny --fast

The steps (in pipelines/_brain_to_image.py, shared with the other modality): simulate the demo
cohort, embed its images with the pretrained EfficientNet-Lite0, train the fMRI encoder of
configs/demo/fmri.yaml, train the image decoder of configs/demo/decoder.yaml on the training
stimuli, reconstruct the test images, evaluate retrieval and the image metrics in one report,
and run the same components as a BrainToImagePipeline, saved and reloaded.
"""

from __future__ import annotations

from _brain_to_image import run


def main(argv: list[str] | None = None) -> dict:
    return run("fmri", argv, description=__doc__)


if __name__ == "__main__":
    main()
