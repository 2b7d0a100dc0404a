"""The training loop: one process or ``torchrun`` DDP, validation-based selection, exact resume.

Read ``docs/training.md`` for the walk through and ``docs/run-folder.md`` for what a run
leaves on disk. In short::

    from neurodec.training import train
    run = train("configs/demo/eeg.yaml")             # or an ExperimentConfig
    run.best_checkpoint / "encoder"                  # BrainEncoder.from_pretrained(...)
    run.final_metrics["val/200-way top-1"]

Determinism: the data order depends only on ``train.seed`` and the epoch; every random
state (torch, numpy, Python, per process) is saved with each ``last`` checkpoint, so a run
killed at any step and started again with the same command replays from its last
checkpoint and ends with bitwise the same parameters on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from neurodec._logging import progress
from neurodec.config import ExperimentConfig, load_config, save_config
from neurodec.errors import ConfigError
from neurodec.training import _checkpoint as checkpoints
from neurodec.training import _distributed as distributed
from neurodec.training._logs import MetricsLog, _write_text_atomically, read_history
from neurodec.training._setup import Prepared, prepare, write_records

logger = logging.getLogger("neurodec")

CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
BEST, LAST = "best", "last"
# Keys that may change between a run and its resumption without changing its result.
# Keys that change neither the data nor the optimisation: a run may resume with other values
# (the evaluation and reconstruction settings are read after training, from the saved config).
_RESUME_FREE = {("output",), ("train", "num_workers"), ("train", "device"), ("evaluation",), ("reconstruction",)}


@dataclass
class Run:
    """A finished run: its folder, the selected checkpoint, the metrics log and final metrics.

    ``final_metrics`` are the validation metrics of the selected (``best``) checkpoint. For
    ``train.n_seeds > 1``, ``seed_runs`` holds one Run per seed and ``final_metrics`` their
    means (``summary.json`` has means and standard deviations).
    """

    run_dir: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    final_metrics: dict[str, float]
    seed_runs: list["Run"] = field(default_factory=list)

    def load_encoder(self, which: str = BEST, device: str = "cpu"):
        """The encoder of the ``best`` or ``last`` checkpoint.

        >>> encoder = run.load_encoder()            # doctest: +SKIP
        """
        from neurodec.models import load_pretrained

        return load_pretrained(self.run_dir / which / checkpoints.ENCODER_FOLDER, device=device)


# ----------------------------------------------------------------- schedules
def learning_rate(config: ExperimentConfig, step: int, total_steps: int) -> float:
    """The learning rate of update ``step`` (0-based) out of ``total_steps``.

    >>> from neurodec.config import load_config
    >>> c = load_config({"data": {"store": "s", "target": "t"}, "model": {"name": "nice"},
    ...                  "optim": {"lr": 1.0, "schedule": "warmup_cosine", "warmup_steps": 2}})
    >>> [round(learning_rate(c, s, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    optim = config.optim
    if optim.schedule == "none":
        return optim.lr
    if optim.schedule == "warmup_cosine":
        if step < optim.warmup_steps:
            return optim.lr * (step + 1) / optim.warmup_steps
        fraction = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        floor = optim.min_lr_ratio
        return optim.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))
    start = optim.lr / optim.div_factor
    end = start / optim.final_div_factor
    rise = max(1, round(optim.pct_start * total_steps))
    if step < rise:
        return start + (optim.lr - start) * 0.5 * (1 - math.cos(math.pi * step / rise))
    fraction = (step - rise) / max(1, total_steps - rise)
    return end + (optim.lr - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


# ------------------------------------------------------------------ helpers
def make_optimizer(config: ExperimentConfig, encoder: torch.nn.Module, loss: torch.nn.Module):
    """AdamW over the trainable parameters of encoder and loss, and the list of those parameters.

    Weight matrices are decayed, biases, norms and temperatures (scalars) are not; this
    includes networks that live in the loss, such as the diffusion prior.
    """
    trainable = [p for module in (encoder, loss) for p in module.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optim = config.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=optim.betas, eps=optim.eps,
    )
    return optimizer, decay + no_decay


def _resolve_device(name: str, processes: distributed.Processes) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and processes.distributed:
        name = f"cuda:{processes.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def _autocast(config: ExperimentConfig, device: torch.device):
    if config.train.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {key: item.to(device) for key, item in value.items()}
    return value.to(device)


def _collate_unchanged(batch: Any) -> Any:
    return batch


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    for path in _RESUME_FREE:
        node = document
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return document


class _Objective(torch.nn.Module):
    """Encoder and loss in one module, so DDP sees (and averages) every trained parameter."""

    def __init__(self, encoder: torch.nn.Module, loss: torch.nn.Module, use_outputs: bool):
        super().__init__()
        self.encoder, self.loss, self.use_outputs = encoder, loss, use_outputs

    def embed(self, brain: Any, subject: torch.Tensor) -> Any:
        return self.encoder.forward_outputs(brain, subject) if self.use_outputs else self.encoder(brain, subject)

    def forward(self, brain: Any, subject: torch.Tensor, target: torch.Tensor, mixco_plan=None):
        extra = {} if mixco_plan is None else {"mixco": mixco_plan}
        return self.loss(self.embed(brain, subject), target, **extra)


@contextlib.contextmanager
def _local_loss(loss: torch.nn.Module):
    """Compute contrastive terms without gathering (on embeddings gathered already), in eval mode.

    Eval mode turns off what only training should do inside a loss (the diffusion prior's
    conditioning dropout)."""
    switched = [m for m in loss.modules() if getattr(m, "gather_across_processes", False)]
    was_training = loss.training
    for module in switched:
        module.gather_across_processes = False
    loss.eval()
    try:
        yield
    finally:
        loss.train(was_training)
        for module in switched:
            module.gather_across_processes = True


# ------------------------------------------------------------------ trainer
class _Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: bool,
                 step_callback: Callable[[int], None] | None):
        self.config, self.run_dir, self.step_callback = config, Path(run_dir), step_callback
        self.processes = distributed.start(config.train.device if config.train.device != "auto" else
                                           ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.device = _resolve_device(config.train.device, self.processes)
            self.main = self.processes.is_main
            self._check_run_folder(resume)
        except BaseException:
            distributed.stop(self.processes)
            raise

    # ------------------------------------------------------------ set up
    def _check_run_folder(self, resume: bool) -> None:
        if self.main:
            checkpoints.recover(self.run_dir / LAST)
            checkpoints.recover(self.run_dir / BEST)
        distributed.barrier(self.processes)
        saved_config = self.run_dir / CONFIG_FILE
        self.resuming = resume and (self.run_dir / LAST / checkpoints.STATE_FILE).exists()
        if saved_config.exists():
            if not resume:
                raise ConfigError(f"{self.run_dir}: a run folder exists there; resume it (resume=True) or choose "
                                  f"another output.name / run_dir")
            import yaml

            before = _comparable(yaml.safe_load(saved_config.read_text(encoding="utf-8")))
            now = _comparable(self.config.to_dict())
            if before != now:
                changed = sorted(_differences(before, now))
                raise ConfigError(f"{self.run_dir}: the run folder was started with another config (changed: "
                                  f"{', '.join(changed[:6])}); choose another output.name to start a new run")

    def setup(self) -> None:
        config = self.config
        self.prepared: Prepared = prepare(config, self.run_dir if self.resuming else None)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / CONFIG_FILE)
            write_records(self.prepared, self.run_dir)
        _seed_everything(config.train.seed)
        self._build_model()
        self.sampler = self._make_sampler()
        self.steps_per_epoch = len(self.sampler)
        limits = []
        if config.train.epochs is not None:
            limits.append(config.train.epochs * self.steps_per_epoch)
        if config.train.max_steps is not None:
            limits.append(config.train.max_steps)
        self.total_steps = min(limits)
        self.counters: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "best_value": None, "best_step": None,
                                         "bad_validations": 0, "stopped_early": False, "done": False,
                                         "last_validation_step": -1, "log_rows": 0, "last_metrics": {},
                                         "best_metrics": {}}
        if self.resuming:
            self._restore()
        self.log = MetricsLog(self.run_dir, keep_rows=self.counters["log_rows"] if self.resuming else None,
                              purge_step=self.counters["step"] + 1 if self.resuming else None, enabled=self.main)

    def _build_model(self) -> None:
        from neurodec.losses import WeightedLoss
        from neurodec.models import create_model

        prepared, config = self.prepared, self.config
        try:
            encoder = create_model(prepared.model_name, **prepared.model_arguments)
        except TypeError as error:
            raise ConfigError(f"model: {error}") from None
        for subject, positions in prepared.subject_positions.items():
            encoder.set_subject_positions(subject, positions)
        try:
            loss = WeightedLoss(config.loss.terms)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"loss.terms: {error}") from None
        use_outputs = any(isinstance(spec, dict) and spec.get("brain") for spec in config.loss.terms.values())
        self.uses_mixco = any((spec.get("loss", name) if isinstance(spec, dict) else name) == "mixco"
                              for name, spec in config.loss.terms.items())
        self._check_output_shape(encoder, use_outputs)
        encoder.to(self.device)
        loss.to(self.device)
        if config.train.sync_batchnorm and self.processes.distributed:
            encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        self.encoder, self.loss = encoder, loss
        self.objective = _Objective(encoder, loss, use_outputs)
        self.optimizer, self.trained_parameters = make_optimizer(config, encoder, loss)
        if self.processes.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Heads the loss does not read (e.g. MindEye's low-level head) get no gradient.
            self.model = DistributedDataParallel(self.objective, device_ids=device_ids, find_unused_parameters=True)
        else:
            self.model = self.objective

    def _check_output_shape(self, encoder, use_outputs: bool) -> None:
        """One forward pass on two training items: the output must match the target's size."""
        train_set = self.prepared.train_set
        batch = train_set[list(range(min(2, len(train_set))))]
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            was_training = encoder.training
            encoder.eval()
            try:
                output = encoder(batch["brain"], batch["subject"])
            except (ValueError, RuntimeError) as error:
                first = str(error).splitlines()[0]
                raise ConfigError(f"model '{self.config.model.name}' cannot read this data: {first}") from None
            encoder.train(was_training)
        if self.uses_mixco and isinstance(batch["brain"], dict):
            raise ConfigError("loss.terms: mixco mixes samples of one tensor, but this fMRI data comes as one tensor "
                              "per subject (different voxel counts); set data.voxel_batches=pad")
        output_size, target_size = output[0].numel(), batch["target"][0].numel()
        if output_size != target_size and not use_outputs:
            raise ConfigError(
                f"model.n_outputs: the encoder gives {tuple(output.shape[1:])} per sample "
                f"({output_size} values) but target '{self.config.data.target}' has "
                f"{tuple(batch['target'].shape[1:])} ({target_size} values); set model.n_outputs (and n_tokens / "
                f"temporal_pooling) to match the target")

    def _make_sampler(self):
        from neurodec.data import ChunkAwareBatchSampler

        train = self.config.train
        # The GLOBAL batches; each process then reads its contiguous share of each one.
        return ChunkAwareBatchSampler(self.prepared.train_set, train.batch_size, shuffle=True, seed=train.seed,
                                      drop_last=train.drop_last, window_batches=train.window_batches)

    # ---------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        states = checkpoints.rng_states()
        if self.processes.distributed:
            import torch.distributed as dist

            every = [None] * self.processes.world_size
            dist.all_gather_object(every, states)
            states_by_rank = every
        else:
            states_by_rank = [states]
        return {
            "format_version": 1,
            "counters": json.loads(json.dumps({**self.counters, "log_rows": self.log.n_rows})),
            "optimizer": self.optimizer.state_dict(),
            "rng_by_rank": states_by_rank,
            "sampler": {"seed": self.sampler.seed, "batch_size": self.sampler.batch_size,
                        "steps_per_epoch": self.steps_per_epoch},
            "world_size": self.processes.world_size,
        }

    def _save_last(self) -> None:
        state = self._trainer_state()  # a collective in DDP: every rank takes part
        if self.main:
            self.log.flush_csv()
            meta = {"kind": LAST, "step": self.counters["step"], "epoch": self.counters["epoch"],
                    "done": self.counters["done"], "metrics": self.counters["last_metrics"]}
            checkpoints.save_checkpoint(self.run_dir / LAST, self.encoder, self.loss, meta, state)
        distributed.barrier(self.processes)

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.main:
            meta = {"kind": BEST, "step": self.counters["step"], "epoch": self.counters["epoch"],
                    "selection_metric": self.config.train.selection_metric, "mode": self.config.train.mode,
                    "value": self.counters["best_value"], "metrics": metrics}
            checkpoints.save_checkpoint(self.run_dir / BEST, self.encoder, self.loss, meta)

    def _restore(self) -> None:
        from safetensors.torch import load_file

        folder = self.run_dir / LAST
        state = checkpoints.load_trainer_state(folder)
        if state["world_size"] != self.processes.world_size:
            logger.warning("resuming a run saved with %d processes on %d: the result stays the same up to "
                           "floating-point rounding, not bitwise", state["world_size"], self.processes.world_size)
        if state["sampler"]["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(f"{folder}: the checkpoint has {state['sampler']['steps_per_epoch']} steps per epoch, "
                              f"the data now give {self.steps_per_epoch}; the store changed since the run started")
        weights = load_file(str(folder / checkpoints.ENCODER_FOLDER / "model.safetensors"))
        self.encoder.load_state_dict(weights, strict=True)
        checkpoints.load_loss_state(folder, self.loss)
        self.optimizer.load_state_dict(state["optimizer"])
        self.counters.update(state["counters"])
        by_rank = state["rng_by_rank"]
        checkpoints.set_rng_states(by_rank[min(self.processes.rank, len(by_rank) - 1)])
        logger.info("resuming %s from step %d (epoch %d, batch %d)", self.run_dir, self.counters["step"],
                    self.counters["epoch"], self.counters["position"])

    # ------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        from neurodec.metrics import evaluate_retrieval

        config, val_set = self.config, self.prepared.val_set
        options = config.train.validation
        self.encoder.eval()
        mine = distributed.local_share(np.arange(len(val_set)), self.processes)
        outputs: dict[str, list[torch.Tensor]] = {}
        targets, subjects, stimuli = [], [], []
        with torch.no_grad(), _autocast(config, self.device):
            for begin in range(0, len(mine), options.batch_size):
                batch = val_set[mine[begin: begin + options.batch_size].tolist()]
                embedded = self.objective.embed(_to_device(batch["brain"], self.device),
                                                batch["subject"].to(self.device))
                embedded = embedded if isinstance(embedded, dict) else {"embedding": embedded}
                for key, value in embedded.items():
                    outputs.setdefault(key, []).append(value.float())
                targets.append(batch["target"].to(self.device))
                subjects.append(batch["subject"].to(self.device))
                stimuli.append(batch["stimulus"].to(self.device))
        self.encoder.train()
        gathered = {key: distributed.gather_rows(torch.cat(parts), self.processes) for key, parts in outputs.items()}
        target = distributed.gather_rows(torch.cat(targets), self.processes)
        subject = distributed.gather_rows(torch.cat(subjects), self.processes).cpu().numpy()
        stimulus = distributed.gather_rows(torch.cat(stimuli), self.processes).cpu().numpy()

        # The loss over the whole validation set, in consecutive chunks of the global batch size:
        # the same chunks whatever the number of processes.
        total, count = 0.0, 0
        size = config.train.batch_size
        with torch.no_grad(), _local_loss(self.loss):
            for begin in range(0, len(target), size):
                part = {key: value[begin: begin + size] for key, value in gathered.items()}
                brain = part if self.objective.use_outputs else part["embedding"]
                value, _ = self.loss(brain, target[begin: begin + size])
                total += float(value) * len(target[begin: begin + size])
                count += len(target[begin: begin + size])
        metrics = {"val/loss": total / count}
        embedding = gathered["embedding"].reshape(len(target), -1).cpu().numpy()
        labels = None if config.data.average_val_repetitions else stimulus
        report = evaluate_retrieval(
            embedding, target.reshape(len(target), -1).float().cpu().numpy(),
            subjects=np.asarray(self.prepared.subject_labels)[subject], n_ways=tuple(options.n_ways),
            top_ks=tuple(options.top_ks), full_set_top_ks=tuple(options.full_set_top_ks), labels=labels,
            n_repeats=options.n_repeats, seed=0, n_bootstrap=0,
        )
        for name, value in report["brain->stimulus"]["pooled"].items():
            metrics[f"val/{name}"] = float(value)
        for name, value in report["stimulus->brain"]["pooled"].items():
            metrics[f"val/stimulus->brain/{name}"] = float(value)
        return metrics

    def _validate_and_select(self) -> None:
        counters, train = self.counters, self.config.train
        metrics = self.validate()
        counters["last_validation_step"] = counters["step"]
        counters["last_metrics"] = metrics
        self.log.write({"step": counters["step"], "epoch": counters["epoch"], "time": time.time(), **metrics})
        value = metrics[train.selection_metric]
        best = counters["best_value"]
        improved = math.isfinite(value) and (
            best is None or (value > best if train.mode == "max" else value < best))
        if improved:
            counters.update(best_value=value, best_step=counters["step"], bad_validations=0, best_metrics=metrics)
            self._save_best(metrics)
        else:
            counters["bad_validations"] += 1
            if train.early_stopping_patience and counters["bad_validations"] >= train.early_stopping_patience:
                counters["stopped_early"] = True
                logger.info("early stopping at step %d: %s has not improved for %d validations",
                            counters["step"], train.selection_metric, counters["bad_validations"])
        logger.info("step %d  %s = %.4f  (best %.4f at step %s)", counters["step"], train.selection_metric, value,
                    counters["best_value"] if counters["best_value"] is not None else float("nan"),
                    counters["best_step"])

    # -------------------------------------------------------- training
    def _epoch_loader(self):
        from torch.utils.data import DataLoader

        counters, train = self.counters, self.config.train
        self.sampler.set_epoch(counters["epoch"])
        batches = list(self.sampler)[counters["position"]:]
        local = [distributed.local_share(np.asarray(b), self.processes).tolist() for b in batches]
        # Its own generator: creating a loader must not draw from the global torch RNG, whose
        # state the checkpoints replay (a resumed epoch creates its loader at another time).
        generator = torch.Generator().manual_seed(train.seed * 100_003 + counters["epoch"])
        loader = DataLoader(self.prepared.train_set, batch_size=None, sampler=local, num_workers=train.num_workers,
                            collate_fn=_collate_unchanged, generator=generator)
        return loader, len(local)

    def _step(self, batch: dict[str, Any]) -> dict[str, float]:
        from neurodec.losses import mixco

        config = self.config
        step = self.counters["step"]
        brain = _to_device(batch["brain"], self.device)
        subject = batch["subject"].to(self.device)
        target = batch["target"].to(self.device)
        plan = None
        if (self.uses_mixco and isinstance(brain, torch.Tensor)
                and step < config.loss.mixco.until_fraction * self.total_steps):
            brain, plan = mixco(brain, config.loss.mixco.beta, config.loss.mixco.probability, subject=subject)
        lr = learning_rate(config, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(config, self.device):
            total, parts = self.model(brain, subject, target, plan)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        row = {"train/loss": float(total.detach()), "lr": lr}
        row.update({f"train/{name}": float(value) for name, value in parts.items()})
        if config.optim.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters, config.optim.grad_clip_norm)
            row["grad_norm"] = float(norm)
        self.optimizer.step()
        return row

    def fit(self) -> None:
        counters, train = self.counters, self.config.train
        pending: list[dict[str, float]] = []
        while not counters["done"]:
            loader, n_batches = self._epoch_loader()
            for batch in progress(loader, f"epoch {counters['epoch']}", total=n_batches):
                pending.append(self._step(batch))
                counters["step"] += 1
                counters["position"] += 1
                step = counters["step"]
                if step % train.log_every == 0:
                    row = {key: float(np.mean([p[key] for p in pending if key in p])) for key in pending[-1]}
                    self.log.write({"step": step, "epoch": counters["epoch"], "time": time.time(), **row})
                    pending = []
                if train.val_unit == "step" and step % train.val_every == 0:
                    self._validate_and_select()
                if step >= self.total_steps or counters["stopped_early"]:
                    counters["done"] = True
                if step % train.checkpoint_every_steps == 0 and not counters["done"]:
                    self._save_last()
                if self.step_callback is not None:
                    self.step_callback(step)
                if counters["done"]:
                    break
            else:
                counters["epoch"] += 1
                counters["position"] = 0
                if train.val_unit == "epoch" and counters["epoch"] % train.val_every == 0:
                    self._validate_and_select()
                if counters["stopped_early"] or (train.epochs is not None and counters["epoch"] >= train.epochs):
                    counters["done"] = True
        if counters["last_validation_step"] != counters["step"]:
            self._validate_and_select()  # the final parameters are always validated
        self._save_last()
        self.log.close()
        self.write_result()

    def write_result(self) -> None:
        counters, train = self.counters, self.config.train
        if self.main:
            result = {
                "selection_metric": train.selection_metric, "mode": train.mode,
                "best_step": counters["best_step"], "best_value": counters["best_value"],
                "best_metrics": counters["best_metrics"], "last_metrics": counters["last_metrics"],
                "steps": counters["step"], "epochs_completed": counters["epoch"],
                "stopped_early": counters["stopped_early"], "world_size": self.processes.world_size,
            }
            _write_text_atomically(self.run_dir / RESULT_FILE, json.dumps(result, indent=1))

    def result(self) -> Run:
        best = self.run_dir / BEST
        return Run(run_dir=self.run_dir, best_checkpoint=best if best.exists() else None,
                   history=read_history(self.run_dir), final_metrics=dict(self.counters["best_metrics"]))

    def close(self) -> None:
        distributed.stop(self.processes)


def _differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now)):
            out += _differences(before.get(key), now.get(key), f"{prefix}{key}.")
        return out
    return [] if before == now else [prefix.rstrip(".")]


def _train_one(config: ExperimentConfig, run_dir: Path, resume: bool,
               step_callback: Callable[[int], None] | None) -> Run:
    trainer = _Trainer(config, run_dir, resume, step_callback)
    try:
        trainer.setup()
        if trainer.counters["done"]:
            logger.info("%s is complete (step %d); nothing to resume", run_dir, trainer.counters["step"])
            trainer.write_result()
        else:
            trainer.fit()
        return trainer.result()
    finally:
        trainer.close()


def summarize_seeds(runs: Sequence[Run]) -> dict[str, Any]:
    """Mean and standard deviation (ddof=1; 0 for one run) of each final validation metric.

    >>> summarize_seeds(seed_runs)["mean"]["val/200-way top-1"]     # doctest: +SKIP
    """
    names = sorted(set().union(*(run.final_metrics for run in runs)))
    values = {name: [run.final_metrics[name] for run in runs if name in run.final_metrics] for name in names}
    return {
        "n_seeds": len(runs),
        "runs": [str(run.run_dir.name) for run in runs],
        "mean": {name: float(np.mean(v)) for name, v in values.items()},
        "sd": {name: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
        "values": values,
    }


def train(
    config: ExperimentConfig | str | os.PathLike | dict,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = True,
    overrides: Sequence[str] = (),
    step_callback: Callable[[int], None] | None = None,
) -> Run:
    """Train the encoder a config describes; return the :class:`Run`.

    ``run_dir`` defaults to ``<output.runs_dir>/<output.name>``. With ``resume`` (default)
    a run folder holding a ``last`` checkpoint is continued from it (the same config is
    required); without, an existing run folder is an error. ``train.n_seeds > 1`` trains one
    run per seed in ``run_dir/seed-<s>/`` and writes ``summary.json``. ``step_callback(step)``
    is called after every optimisation step (after any checkpoint of that step).

    Under ``torchrun`` every process calls this; only rank 0 writes.

    >>> run = train("configs/demo/eeg.yaml", overrides=["train.epochs=2"])    # doctest: +SKIP
    >>> run.final_metrics["val/loss"]                                          # doctest: +SKIP
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides)
    elif overrides:
        from neurodec.config import apply_overrides

        config = load_config(apply_overrides(config.to_dict(), overrides))
    run_dir = Path(run_dir) if run_dir is not None else Path(config.output.runs_dir) / str(config.output.name)
    if config.train.n_seeds == 1:
        return _train_one(config, run_dir, resume, step_callback)
    seeds = [config.train.seed + offset for offset in range(config.train.n_seeds)]
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    runs = []
    for seed in seeds:
        single = config.model_copy(deep=True)
        single.train.seed, single.train.n_seeds = seed, 1
        runs.append(_train_one(single, run_dir / f"seed-{seed}", resume, step_callback))
    summary = summarize_seeds(runs)
    if int(os.environ.get("RANK", "0")) == 0:
        _write_text_atomically(run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
    return Run(run_dir=run_dir, best_checkpoint=None, history=[], final_metrics=summary["mean"], seed_runs=runs)


__all__ = ["Run", "learning_rate", "summarize_seeds", "train"]
