"""
An extra plugin of every kind (pattern, router, source, command), installed only by the extra-plugin check.

Its GPT-NeoX pattern claims Pythia models and adapters at the confidence a real plugin would, so core
tests that assumed "no installed plugin claims GPT-NeoX" or compared exact plugin lists would fail with it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from adaptrix_core import AdapterInfo, Detection, ModuleMap, Routing, hookimpl
from adaptrix_core.detection import adapter_leaf_names, base_model_mentions


ARCHITECTURE = "gpt_neox"

MODULE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.qkv": "gpt_neox.layers.*.attention.query_key_value",
        "attn.o": "gpt_neox.layers.*.attention.dense",
        "mlp.up": "gpt_neox.layers.*.mlp.dense_h_to_4h",
        "mlp.down": "gpt_neox.layers.*.mlp.dense_4h_to_h",
    },
)


@hookimpl
def detect_architecture(model: Any, config: Any) -> Detection | None:
    if type(model).__name__.startswith("GPTNeoX"):
        return Detection(ARCHITECTURE, 1.0, f"class is {type(model).__name__}")
    if getattr(config, "model_type", None) == "gpt_neox":
        return Detection(ARCHITECTURE, 0.9, "config.model_type == 'gpt_neox'")
    return None


@hookimpl
def detect_adapter_architecture(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> Detection | None:
    leaves = adapter_leaf_names(adapter_config, module_names)
    if "query_key_value" not in leaves:
        return None
    named = base_model_mentions(adapter_config, "pythia", "gpt-neox", "neox")
    if named:
        return Detection(ARCHITECTURE, 0.9, f"query_key_value and base model names {named!r}")
    return Detection(ARCHITECTURE, 0.5, "query_key_value, shared with Falcon and BLOOM")


@hookimpl
def map_modules(architecture: str) -> ModuleMap | None:
    return MODULE_MAP if architecture == ARCHITECTURE else None


class FirstRouter:
    """Always the first adapter: the simplest router a plugin can add."""

    name: ClassVar[str] = "testextra-first"

    def route(self, query: str, adapters: Sequence[AdapterInfo], *, resident: Collection[str] = ()) -> Routing:
        if not adapters:
            return Routing({}, router=self.name, reason="no adapters")
        return Routing({adapters[0].name: 1.0}, router=self.name, reason="always the first")


class NowhereSource:
    """``testextra://NAME``: claims nothing without its scheme, and has nothing to fetch."""

    scheme: ClassVar[str] = "testextra"

    def claims(self, ref: str) -> bool:
        return False

    def fetch(self, ref: str) -> Path:
        from adaptrix_core.exceptions import AdapterNotFoundError

        raise AdapterNotFoundError(f"testextra://{ref}: this test source holds no adapters.")


@hookimpl
def register_routers() -> list[type]:
    return [FirstRouter]


@hookimpl
def register_adapter_sources() -> list[object]:
    return [NowhereSource()]


@hookimpl
def register_commands(app: Any) -> None:
    @app.command(name="testextra-hello")
    def hello() -> None:
        """Print a greeting (the extra test plugin's command)."""
        print("hello from testextra")
