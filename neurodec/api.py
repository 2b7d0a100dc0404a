"""The public Python API: what a lab uses from a notebook, and what the CLI calls.

>>> import neurodec
>>> study, report = neurodec.simulate_cohort("demo.zarr", size="tiny")   # doctest: +SKIP
>>> print(neurodec.info(study))                                    # doctest: +SKIP
>>> study = neurodec.ingest(["sub-01_eeg.edf"], "my-study.zarr")    # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neurodec.store import Study, format_summary, open_store, summarize

__all__ = ["adapt", "convert", "embed", "evaluate", "info", "ingest", "load_encoder", "open_store", "reconstruct",
           "retrieve", "simulate_cohort", "simulate_speech", "train", "train_decoder"]


def info(store: Study | str | os.PathLike, *, as_dict: bool = False) -> str | dict[str, Any]:
    """A readable summary of a store (``as_dict=True``: the same as JSON-ready values)."""
    study = store if isinstance(store, Study) else open_store(store)
    summary = summarize(study)
    return summary if as_dict else format_summary(summary)


def ingest(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    options: Any = None,
    overwrite: bool = False,
    append: bool = False,
) -> Study:
    """Convert native recordings (MNE formats, BIDS, NIfTI) into a study store.

    See :func:`neurodec.io.ingest` for the options.
    """
    from neurodec.io import ingest as ingest_recordings

    return ingest_recordings(
        [Path(s) for s in sources], out, options=options, overwrite=overwrite, append=append
    )


def convert(recipe: str, source: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Study:
    """Convert a public study from its published layout into a store with its recipe.

    Recipes: ``meg-masc``, ``schoffelen-mous``, ``brennan2019``, ``broderick2019``
    (:mod:`neurodec.io.recipes`; each module's ``convert`` lists its options).

    >>> study = convert("meg-masc", "/data/meg-masc", "meg-masc.zarr", subjects=["01"])  # doctest: +SKIP
    """
    from neurodec.io.recipes import convert as convert_study

    return convert_study(recipe, source, out, **options)


def simulate_cohort(out: str | os.PathLike, **parameters: Any):
    """Simulate the demo cohort into a store; returns ``(study, report)``.

    See :func:`neurodec.simulate.simulate_cohort` for the parameters.
    """
    from neurodec.simulate import simulate_cohort as simulate

    return simulate(out, **parameters)


def simulate_speech(out: str | os.PathLike, **parameters: Any):
    """Simulate the demo cohort's auditory part (stories, continuous MEG/EEG) into a store;
    returns ``(study, report)``. See :func:`neurodec.simulate.simulate_speech`.

    >>> study, report = simulate_speech("speech.zarr", size="tiny")   # doctest: +SKIP
    """
    from neurodec.simulate import simulate_speech as simulate

    return simulate(out, **parameters)


def embed(
    store: Study | str | os.PathLike,
    extractor: str,
    config: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """Embed the store's stimuli with a target extractor and cache them in the store.

    Returns the targets' key; computed only when no targets with the same config exist.
    See :func:`neurodec.targets.embed_stimuli` for the options.

    >>> key = neurodec.embed("demo.zarr", "image_pretrained_cnn")   # doctest: +SKIP
    """
    from neurodec.targets import embed_stimuli

    return embed_stimuli(store, extractor, config, **options)


def train(config: Any, *, overrides: list[str] | tuple[str, ...] = (), run_dir: str | os.PathLike | None = None,
          resume: bool = True):
    """Train a brain encoder from an experiment config (a YAML path, dict or config object).

    Returns the :class:`~neurodec.training.Run` (run folder, best checkpoint, history, metrics).
    Re-running the same config resumes an interrupted run exactly.

    >>> run = neurodec.train("configs/demo/eeg.yaml", overrides=["train.epochs=5"])  # doctest: +SKIP
    >>> encoder = run.load_encoder("best")                                          # doctest: +SKIP
    """
    from neurodec.training import train as train_encoder

    return train_encoder(config, run_dir=run_dir, resume=resume, overrides=overrides)


def load_encoder(run_dir: str | os.PathLike, checkpoint: str = "best", **options: Any):
    """A trained encoder with its fitted transform and subjects, ready for new trials.

    >>> encoder = neurodec.load_encoder("runs/eeg-demo")            # doctest: +SKIP
    >>> z = encoder.embed(trials, subject="01")                     # doctest: +SKIP
    """
    from neurodec.evaluation import load_encoder as load

    return load(run_dir, checkpoint, **options)


def retrieve(brain_embeddings: Any, targets: Any, k: int = 5, **options: Any):
    """The ``k`` best candidates (ids and cosine scores) for each brain embedding.

    >>> neurodec.retrieve(z, study.targets("efficientnet-lite0"), k=5).ids   # doctest: +SKIP
    """
    from neurodec.evaluation import retrieve as rank

    return rank(brain_embeddings, targets, k, **options)


def evaluate(run_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Score a trained run on its test split (retrieval, ridge baseline, chance) and write
    ``report.json``, ``report.md`` and ``report.html``; returns the results.

    >>> results = neurodec.evaluate("runs/eeg-demo")                # doctest: +SKIP
    """
    from neurodec.evaluation import evaluate_run

    return evaluate_run(run_dir, **options)


def adapt(run_dir: str | os.PathLike, subject: str, n_trials: int | None = None, *, curve: bool = False,
          **options: Any):
    """Fit a new subject's adapter on a trained run, the shared model frozen.

    With ``curve=True``, accuracy against the number of trials (``grid=``), next to a model
    trained from scratch on the same trials, over ``seeds=``; otherwise one fit on
    ``n_trials`` trials.

    >>> result = neurodec.adapt("runs/fmri-demo", "04", 100)                    # doctest: +SKIP
    >>> curve = neurodec.adapt("runs/fmri-demo", "04", curve=True)              # doctest: +SKIP
    """
    from neurodec.training import adapt as adapt_subject
    from neurodec.training import adapt_curve

    if curve:
        return adapt_curve(run_dir, subject, **options)
    if n_trials is None:
        from neurodec.errors import ConfigError

        raise ConfigError("adapt: give n_trials (the new subject's training trials), or curve=True")
    return adapt_subject(run_dir, subject, n_trials, **options)


def train_decoder(store: Study | str | os.PathLike, target: str, out: str | os.PathLike, **options: Any):
    """Train the compact image decoder (target embedding -> image) on the store's training stimuli.

    >>> decoder = neurodec.train_decoder("demo.zarr", "efficientnet-lite0", "decoders/demo")   # doctest: +SKIP
    """
    from neurodec.evaluation.reconstruct import train_decoder as train_image_decoder

    return train_image_decoder(store, target, out, **options)


def reconstruct(run_dir: str | os.PathLike, **options: Any):
    """Decode a run's test items into images (PNG files, arrays and a grid in the run folder).

    Settings come from the run config's ``reconstruction`` section; keywords override them.

    >>> result = neurodec.reconstruct("runs/fmri-demo", decoder="decoders/demo")   # doctest: +SKIP
    >>> result.images.shape                                                       # doctest: +SKIP
    """
    from neurodec.evaluation.reconstruct import reconstruct_run

    return reconstruct_run(run_dir, **options)
