"""
The runtime on other devices and dtypes: CUDA (tests marked ``gpu``) and bfloat16.

bfloat16 runs on the CPU too, so the dtype path is checked on every machine;
the CUDA cases run where a GPU is present and are skipped, with the reason,
everywhere else (CI has no GPU).
"""

from __future__ import annotations

import pytest
import torch

from peft import LoraConfig, PeftModel, get_peft_model

from adaptrix_core import attach
from adaptrix_core.testing import logits_row_by_row, tiny_llama


HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu,
                                          pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")]),
]


def _peft_adapter(directory, seed: int) -> None:
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(tiny_llama(), config).save_pretrained(directory)


def _ids(device: str) -> torch.Tensor:
    return torch.randint(1, 128, (3, 8), generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_logits_equal_peft_on_device(device, tmp_path):
    """On each device, one adapter gives PEFT's logits (float32, 1e-4: GPU kernels reorder sums)."""
    _peft_adapter(tmp_path / "a", seed=1)
    model = tiny_llama().to(device)
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    ids = _ids(device)
    with torch.no_grad(), am.using("a"):
        ours = model(ids).logits
    reference = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a").to(device).eval()
    with torch.no_grad():
        theirs = reference(ids).logits

    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_adapter_tensors_follow_the_model(device, tmp_path):
    """
    A bfloat16 model gets bfloat16 adapter tensors on its device, and its logits
    stay within bfloat16 rounding of the float32 result.
    """
    _peft_adapter(tmp_path / "a", seed=2)
    ids = _ids(device)
    exact = tiny_llama().to(device)
    exact_am = attach(exact)
    exact_am.load_adapter("a", tmp_path / "a")
    with torch.no_grad(), exact_am.using("a"):
        expected = exact(ids).logits

    model = tiny_llama().to(device=device, dtype=torch.bfloat16)
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    with torch.no_grad(), am.using("a"):
        logits = model(ids).logits

    assert {(torch.bfloat16, torch.device(device).type)} == {
        (t.dtype, t.device.type) for t in am.adapter_parameters("a")
    }
    assert torch.bfloat16 == logits.dtype
    torch.testing.assert_close(logits.float(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_batch_on_device_equals_rows_alone(device, tmp_path):
    """A mixed batch (adapter, other adapter, base) equals each row run alone, on each device."""
    _peft_adapter(tmp_path / "a", seed=3)
    _peft_adapter(tmp_path / "b", seed=4)
    model = tiny_llama().to(device)
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    am.load_adapter("b", tmp_path / "b")
    ids = _ids(device)
    rows = ["a", "b", None]
    with torch.no_grad():
        mixed = am.forward(ids, adapters=rows).logits

    torch.testing.assert_close(mixed, logits_row_by_row(am, ids, rows), atol=1e-4, rtol=0)
