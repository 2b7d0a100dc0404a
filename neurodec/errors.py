"""The one exception hierarchy of neurodec.

Every error raised on purpose by neurodec derives from :class:`NeurodecError`, so a
caller can catch them all, and the command line turns them into a one-line message and
a non-zero exit. Messages name the file or store, the field, what was expected and what
was found.
"""

from __future__ import annotations


class NeurodecError(Exception):
    """Base class of every error neurodec raises on purpose."""


class StoreError(NeurodecError):
    """A study store is missing, unreadable or inconsistent."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No study store exists at the given location."""


class StoreExistsError(StoreError, FileExistsError):
    """A store already exists where a new one would be written."""


class StoreVersionError(StoreError):
    """The store was written in a format version this neurodec cannot read."""


class StoreSchemaError(StoreError):
    """A store's metadata or arrays do not match the documented schema."""


class IncompleteStoreError(StoreSchemaError):
    """A store that was never completed (an interrupted write)."""


class IngestError(NeurodecError):
    """A native recording could not be converted into the store."""


class InputFileError(IngestError):
    """A source file is missing, truncated, corrupt or unreadable."""


class InvalidDataError(IngestError):
    """Source data hold values that cannot be stored (NaN, Inf, mismatched shapes)."""


class ChannelMismatchError(IngestError):
    """Runs of one subject disagree on their channel set."""


class EventError(IngestError):
    """Events are malformed or name stimuli the store does not know."""


class MaskError(IngestError):
    """An fMRI mask does not match the functional volume."""


class ConfigError(NeurodecError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class SplitError(NeurodecError):
    """A requested data split is empty or leaks stimuli between parts."""


class RegistryError(NeurodecError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MetricInputError(NeurodecError, ValueError):
    """Inputs to a metric disagree (shapes, lengths) or a protocol cannot run on them."""


class ReportInputError(NeurodecError, ValueError):
    """A results dict handed to the report writer does not follow the documented schema."""


class TargetError(NeurodecError):
    """Stimulus embeddings (targets) cannot be computed: missing inputs, bad shapes."""


class WeightsNotFoundError(TargetError, FileNotFoundError):
    """A model's weight file is not on this machine (weights are never downloaded at run time)."""


class RunFolderError(NeurodecError, FileNotFoundError):
    """A run folder is missing, incomplete, or not a single run (repeated seeds)."""


class UnknownSubjectError(NeurodecError, ValueError):
    """A subject the trained encoder has no subject-specific weights for."""


class DecoderInputError(NeurodecError, ValueError):
    """Images or embeddings handed to an image decoder or generator have the wrong shape, type or count."""
