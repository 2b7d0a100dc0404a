"""The dataset cards in ``datasets/``: one YAML file per public study neurodec knows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neurodec.errors import ConfigError, RegistryError

REQUIRED_FIELDS = ("name", "title", "modality", "source", "licence", "citation", "recipe")


def cards_folder() -> Path:
    """``NEURODEC_DATASETS`` if set, else the ``datasets/`` folder of the source tree."""
    return Path(os.environ.get("NEURODEC_DATASETS", Path(__file__).resolve().parents[1] / "datasets"))


def dataset_cards(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """All cards by name, each checked for the required fields."""
    import yaml

    folder = folder or cards_folder()
    if not folder.is_dir():
        raise ConfigError(f"dataset cards folder {folder} not found (set NEURODEC_DATASETS to it)")
    cards = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            card = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
        missing = [field for field in REQUIRED_FIELDS if field not in card]
        if missing:
            raise ConfigError(f"{path}: dataset card lacks {missing}")
        if card["name"] != path.stem:
            raise ConfigError(f"{path}: field 'name' expected {path.stem!r}, found {card['name']!r}")
        cards[card["name"]] = card
    return cards


def dataset_card(name: str) -> dict[str, Any]:
    cards = dataset_cards()
    if name not in cards:
        raise RegistryError(f"no dataset card {name!r}; known: {', '.join(cards)}")
    return cards[name]
