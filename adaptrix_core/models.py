"""
Find and load base models: a hub id (from the local HF cache), a local path, or the embedded default.

Adaptrix never downloads weights behind the user's back in tests: with
``HF_HUB_OFFLINE=1`` a hub id resolves only from the local cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import EMBEDDED_MODEL, AdaptrixConfig, load_config
from .exceptions import ModelLoadError


if TYPE_CHECKING:
    from torch import nn


def resolve_model_ref(ref: str | None, config: AdaptrixConfig | None = None) -> str:
    """
    Return a local path or hub id for *ref*; ``None`` means the configured default.

    The embedded default is converted on first use (see :mod:`adaptrix_core.embedded`).
    """
    config = config or load_config()
    ref = ref or config.base_model
    if ref == EMBEDDED_MODEL:
        from .embedded import ensure_embedded_model

        return str(ensure_embedded_model(config))
    return ref


def _from_pretrained(loader: Any, ref: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(ref, **kwargs)
    except OSError as e:
        hint = (
            "it is not a local directory, and the hub id is not in the local Hugging Face cache "
            "(downloads are off when HF_HUB_OFFLINE=1)"
            if not Path(ref).exists()
            else "the directory has no readable model files"
        )
        raise ModelLoadError(f"Cannot load {what} {ref!r}: {hint}. ({str(e).splitlines()[0]})") from None
    except ValueError as e:
        raise ModelLoadError(f"Cannot load {what} {ref!r}: {str(e).splitlines()[0]}") from None


def load_model_skeleton(ref: str | None, config: AdaptrixConfig | None = None) -> nn.Module:
    """
    Build *ref*'s model class from its config on the ``meta`` device (no weights read).

    Enough for detection and module mapping, and instant even for 7B models.
    """
    import torch

    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_ref(ref, config)
    model_config = _from_pretrained(AutoConfig, path, "model config")
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(model_config)
        except ValueError as e:
            raise ModelLoadError(f"Cannot build a causal LM for {path!r}: {str(e).splitlines()[0]}") from None


def load_base_model(
    ref: str | None = None, *, config: AdaptrixConfig | None = None, device: str | None = None, dtype: str | None = None
) -> tuple[nn.Module, Any]:
    """
    Load a base model and its tokenizer, frozen and in eval mode.

    Args:
        ref: Hub id, local path, or the embedded default's name; ``None`` = configured default.
        config: Settings (device, dtype, default model); loaded when not given.
        device: Overrides ``config.device``.
        dtype: Overrides ``config.dtype``.
    """
    import torch

    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or load_config()
    if device or dtype:
        config = load_config(
            device=device or config.device,
            dtype=dtype or config.dtype,
            base_model=config.base_model,
            library_dir=config.library_dir,
            cache_dir=config.cache_dir,
            state_dir=config.state_dir,
        )
    from transformers.utils import logging as hf_logging

    path = resolve_model_ref(ref, config)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar from a library call; callers show their own
    try:
        model = _from_pretrained(AutoModelForCausalLM, path, "base model", dtype=getattr(torch, config.resolved_dtype()))
        tokenizer = _from_pretrained(AutoTokenizer, path, "tokenizer")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.to(config.resolved_device()).eval()
    model.requires_grad_(False)
    return model, tokenizer
