"""Checkpoint folders written atomically: a complete folder appears under its name, or none does.

A checkpoint is written into a temporary folder beside its final place, then swapped in:
``last`` is renamed to ``.last.old``, the new folder to ``last``, and the old one removed.
A process killed between the two renames leaves ``.last.old`` (complete) and no ``last``;
:func:`recover` puts it back. Files inside are written through temporary names too
(:meth:`BrainEncoder.save_pretrained` does the same).

Folder contents (see ``docs/run-folder.md``):

- ``encoder/``: ``config.json`` + ``model.safetensors`` (``BrainEncoder.save_pretrained``);
- ``loss.safetensors``: the loss module's tensors (e.g. CLIP's learnable temperature);
- ``meta.json``: step, epoch, validation metrics at that step;
- ``trainer_state.pt`` (``last`` only): optimizer, schedule position, RNG states, data
  position, best-so-far, log length, everything :func:`load_trainer_state` needs to resume.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENCODER_FOLDER = "encoder"
LOSS_FILE = "loss.safetensors"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.pt"


def _old_name(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.old"


def recover(folder: Path) -> None:
    """Finish or undo a swap a killed process left half done; drop stale temporary folders."""
    old = _old_name(folder)
    if old.exists():
        if folder.exists():
            shutil.rmtree(old)  # the swap completed; only the clean-up was missed
        else:
            os.replace(old, folder)  # killed between the renames: the old folder is complete
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _save_tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temporary)
    os.replace(temporary, path)


def _save_json(path: Path, document: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(document, stream, indent=1)
    os.replace(temporary, path)


def save_checkpoint(
    folder: Path,
    encoder,
    loss_module: torch.nn.Module,
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder at ``folder`` (replacing any previous one atomically)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover(folder)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        encoder.save_pretrained(building / ENCODER_FOLDER)
        _save_tensor_file(building / LOSS_FILE, loss_module.state_dict())
        if trainer_state is not None:
            handle, temporary = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=building)
            os.close(handle)
            torch.save(trainer_state, temporary)
            os.replace(temporary, building / STATE_FILE)
        _save_json(building / META_FILE, meta)
        old = _old_name(folder)
        if folder.exists():
            os.replace(folder, old)
        os.replace(building, folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))


def load_loss_state(folder: Path, loss_module: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    loss_module.load_state_dict(load_file(str(Path(folder) / LOSS_FILE)), strict=True)


# ------------------------------------------------------------------ RNG states
def rng_states() -> dict[str, Any]:
    """Every random state training draws from (torch CPU and CUDA, numpy global, Python)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": python_state[0], "internal": list(python_state[1]), "gauss": python_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_trainer_state(folder: Path) -> dict[str, Any]:
    # Plain containers, numbers, strings and tensors only: the safe loader reads them.
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
