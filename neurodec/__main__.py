"""``python -m neurodec`` (also how ``torchrun -m neurodec`` starts it)."""

from neurodec.cli import entry_point

entry_point()
