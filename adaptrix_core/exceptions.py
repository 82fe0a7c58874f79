"""
Every error Adaptrix raises on purpose.

They live in one small module so every other module can import them without
cycles. Each message says what happened, what was expected, and the fix; the
CLI prints an ``AdaptrixError`` as one line and exits non-zero.
"""

from __future__ import annotations


class AdaptrixError(Exception):
    """Base class for every error Adaptrix raises on purpose."""


class PluginError(AdaptrixError):
    """A plugin broke the hook contract (bad return value, duplicate name, failed import)."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"Plugin {plugin!r}: {message}")
        self.plugin = plugin


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for a router, strategy or source."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(
            second,
            f"registers {kind} {name!r}, which plugin {first!r} already registered. "
            f"Fix: uninstall one of them or block it with ADAPTRIX_BLOCK_PLUGINS={second}.",
        )
        self.kind = kind
        self.name = name


class UnknownArchitectureError(AdaptrixError, LookupError):
    """No installed architecture plugin recognises a model or an adapter."""


class AmbiguousArchitectureError(AdaptrixError):
    """Two plugins claim a model for different architectures with the same confidence."""


class NotRegisteredError(AdaptrixError, LookupError):
    """An unknown router, injection strategy or adapter source name."""


class ConfigError(AdaptrixError):
    """The user configuration (TOML file or environment variable) is invalid."""


class ModelLoadError(AdaptrixError):
    """A base model could not be found or loaded."""


class AdapterError(AdaptrixError):
    """Base class for problems with one adapter."""


class AdapterFormatError(AdapterError):
    """An adapter's files are missing, unreadable or not valid PEFT LoRA (names file and field)."""


class UnsupportedFeatureError(AdapterError):
    """An adapter uses a PEFT feature Adaptrix refuses rather than silently ignores (e.g. DoRA)."""


class AdapterMismatchError(AdapterError):
    """An adapter's tensors do not fit the base model (missing modules, wrong shapes)."""


class AdapterNotFoundError(AdapterError, LookupError):
    """No adapter of that name is loaded or in the library."""


class AdapterExistsError(AdapterError):
    """An adapter of that name already exists (library install or runtime load)."""


class InvalidNameError(AdapterError, ValueError):
    """An adapter name is empty, too long, or contains path separators or ``..``."""


class AdapterInUseError(AdapterError):
    """An adapter cannot be unloaded or evicted while a request uses it or while it is merged."""


class SelectionError(AdaptrixError, ValueError):
    """An active-adapter selection is malformed (bad weight, unknown form)."""


class StateError(AdaptrixError):
    """The persisted CLI state could not be read or written."""


class RoutingError(AdaptrixError):
    """A router failed or returned an invalid decision."""


class TrainingError(AdaptrixError):
    """A training run got invalid data or options."""


class GenerationError(AdaptrixError, ValueError):
    """A generation request cannot run: empty or too long prompt, bad sampling options, token limits."""
