"""Converters from published study layouts into a neurodec store, one module per study.

Each recipe reads a study in the layout its authors published (folders, file names and
columns as they describe them) and writes a store in one step::

    from neurodec.io.recipes import convert
    study = convert("meg-masc", "/data/meg-masc", "meg-masc.zarr", subjects=["01"])

or ``neurodec convert meg-masc /data/meg-masc meg-masc.zarr``. The dataset card of the same
name (``neurodec datasets``) says where to get the study and how it is cited. Recipes are
imported when asked for, so ``import neurodec.io`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from neurodec.errors import RegistryError


@dataclass(frozen=True)
class Recipe:
    """A study's converter: ``convert(source, out, **options) -> Study``."""

    name: str
    module: str
    summary: str

    def load(self) -> Callable[..., Any]:
        return importlib.import_module(self.module).convert


_RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("meg-masc", "neurodec.io.recipes.meg_masc", "Gwilliams et al. 2023 MEG-MASC (BIDS, KIT MEG, stories)"),
        Recipe("schoffelen-mous", "neurodec.io.recipes.mous", "Schoffelen et al. 2019 MOUS auditory task (BIDS, CTF MEG)"),
        Recipe("brennan2019", "neurodec.io.recipes.brennan2019", "Brennan & Hale 2019 Alice in Wonderland EEG"),
        Recipe("broderick2019", "neurodec.io.recipes.broderick2019", "Broderick et al. 2018 natural speech EEG"),
    )
}


def list_recipes() -> list[str]:
    """Names of the study converters (each matches a dataset card)."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise RegistryError(f"unknown recipe {name!r}; known recipes: {list_recipes()}")
    return _RECIPES[name]


def convert(name: str, source: Any, out: Any, **options: Any):
    """Convert the study ``name`` found at ``source`` into a store at ``out``; returns the Study."""
    return get_recipe(name).load()(source, out, **options)


__all__ = ["Recipe", "convert", "get_recipe", "list_recipes"]
