"""Runtime behaviour: attach/detach, selections, merge, layer bands, threads, refusals."""

from __future__ import annotations

import threading

import pytest
import torch

from peft import LoraConfig, get_peft_model

from adaptrix_core import attach
from adaptrix_core.exceptions import (
    AdapterExistsError,
    AdapterInUseError,
    AdapterMismatchError,
    AdapterNotFoundError,
    AdaptrixError,
    InvalidNameError,
    SelectionError,
)
from adaptrix_core.lora_layer import LoraLayer
from adaptrix_core.runtime import LoraSpec, resolve_layers
from adaptrix_core.testing import tiny_gpt2, tiny_llama


def _peft_adapter(directory, *, seed=0, r=4, targets=("q_proj", "v_proj"), layers=4, **extra):
    torch.manual_seed(seed)
    model = get_peft_model(
        tiny_llama(layers=layers), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, **extra)
    )
    model.save_pretrained(directory)
    return directory


@pytest.fixture(name="ids")
def _ids():
    return torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(name="am")
def _am(tmp_path):
    model = tiny_llama(layers=4)
    am = attach(model)
    for i, name in enumerate(("a", "b", "c")):
        am.load_adapter(name, _peft_adapter(tmp_path / name, seed=i))
    return am


def test_attach_wraps_once_and_detach_restores_exactly(ids):
    """
    attach wraps every mapped module; detach puts the very same modules back and the logits are bit-identical.
    """
    model = tiny_llama(layers=4)
    originals = dict(model.named_modules())
    with torch.no_grad():
        before = model(ids).logits
    am = attach(model)

    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert 4 * 7 == len(wrapped)
    am.detach()

    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert all(originals[n] is m for n, m in model.named_modules())
    with torch.no_grad():
        assert torch.equal(before, model(ids).logits)


def test_loading_and_switching_never_change_module_structure(am, tmp_path):
    """
    Module objects are the same before and after loads, switches and unloads.
    """
    before = [id(m) for m in am.model.modules()]
    am.set_active({"a": 0.5, "b": 0.5})
    am.unload_adapter("c")
    am.load_adapter("d", _peft_adapter(tmp_path / "d", seed=9))
    am.set_active("d")

    assert before == [id(m) for m in am.model.modules()]


def test_attach_twice_is_refused():
    """
    A model is attached once; a second attach says how to proceed.
    """
    model = tiny_llama()
    attach(model)

    with pytest.raises(AdaptrixError, match="already attached"):
        attach(model)


def test_roles_and_layers_limit_what_is_wrapped():
    """
    roles= and layers= narrow the wrapped modules.
    """
    am = attach(tiny_llama(layers=6), roles=["attn.q"], layers="middle")

    assert {"model.layers.2.self_attn.q_proj", "model.layers.3.self_attn.q_proj"} == set(am.wrapped)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, (0, 1, 2, 3, 4, 5)),
        ("all", (0, 1, 2, 3, 4, 5)),
        ("middle", (2, 3)),
        ("1-3", (1, 2, 3)),
        ("0,5", (0, 5)),
        (4, (4,)),
        (range(2), (0, 1)),
        ([5, 1, 1], (1, 5)),
    ],
)
def test_resolve_layers(spec, expected):
    """
    Layer specs resolve to sorted unique indices.
    """
    assert expected == resolve_layers(spec, 6)


@pytest.mark.parametrize("spec", ["7", [-1], "x-y", 2.5, True])
def test_bad_layer_specs_are_refused(spec):
    """
    Out-of-range or malformed layer specs raise SelectionError naming the valid range or forms.
    """
    with pytest.raises(SelectionError, match="layers="):
        resolve_layers(spec, 6)


def test_middle_third_of_thirty_layers():
    """
    'middle' is the middle third: layers 10-19 of 30.
    """
    assert tuple(range(10, 20)) == resolve_layers("middle", 30)


def test_load_with_layer_band_reports_the_rest_as_skipped(tmp_path, ids):
    """
    layers= keeps a band of an adapter's layers; the others are reported as skipped and have no effect.
    """
    model = tiny_llama(layers=4)
    am = attach(model)
    report = am.load_adapter("a", _peft_adapter(tmp_path / "a"), layers="2-3")

    assert {2, 3} == {m.layer for m in report.modules}
    assert 4 == len(report.skipped)
    assert all("outside layers" in reason for _, reason in report.skipped)


def test_selection_forms_are_equivalent(am, ids):
    """
    "a", ["a"], {"a": 1.0} and "a:1" select the same thing; "base" and None the base model.
    """
    outputs = []
    with torch.no_grad():
        for sel in ("a", ["a"], {"a": 1.0}, "a:1"):
            with am.using(sel):
                outputs.append(am.model(ids).logits)
        with am.using("base"):
            base = am.model(ids).logits
        with am.using(None):
            base2 = am.model(ids).logits

    assert all(torch.equal(outputs[0], o) for o in outputs)
    assert torch.equal(base, base2)
    assert not torch.equal(base, outputs[0])


def test_weighted_sum_is_linear_in_the_deltas(am, ids):
    """
    (logits-with-{a:w1,b:w2} - base) equals the same sum of per-adapter deltas, layer by layer linear: checked on one module.
    """
    x = torch.randn(3, 32)
    module = "model.layers.1.self_attn.q_proj"
    layer = am.model.get_submodule(module)
    with torch.no_grad():
        base = layer.base_layer(x)
        with am.using({"a": 0.3, "b": -1.5, "c": 2.0}):
            mixed = layer(x)
    expected = base + x @ (0.3 * am.delta_weight("a", module) - 1.5 * am.delta_weight("b", module)
                           + 2.0 * am.delta_weight("c", module)).T

    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)


def test_set_active_is_the_default_and_using_overrides_it(am):
    """
    set_active sets what every caller sees; using() overrides it only inside the block.
    """
    am.set_active("a")
    with am.using({"b": 0.5}):
        inner = am.active
    assert {"b": 0.5} == inner
    assert {"a": 1.0} == am.active


def test_unknown_adapter_in_selection_is_refused(am):
    """
    Selecting an adapter that is not loaded names it and lists the loaded ones.
    """
    with pytest.raises(AdapterNotFoundError, match=r"'zzz'.*Loaded: a, b, c"):
        am.set_active({"a": 1, "zzz": 1})


@pytest.mark.parametrize("bad", ["a:x", "a:1+a:2", "a:inf", 3, {"a": "1"}])
def test_malformed_selections_are_refused(am, bad):
    """
    Malformed selections raise SelectionError, not a deep error at forward time.
    """
    with pytest.raises(SelectionError):
        am.set_active(bad)


def test_threads_with_different_adapters_do_not_see_each_other(am, ids):
    """
    N threads, each in its own using() block, produce exactly the sequential reference outputs.
    """
    selections = ["a", "b", "c", None, {"a": 0.5, "c": 0.5}, "b", "a", None]
    with torch.no_grad():
        reference = []
        for sel in selections:
            with am.using(sel):
                reference.append(am.model(ids).logits)
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(selections))

    def work(i, sel):
        barrier.wait()
        with torch.no_grad():
            for _ in range(5):
                with am.using(sel):
                    results[i] = am.model(ids).logits

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(selections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(torch.equal(reference[i], results[i]) for i in range(len(selections)))


def test_merge_matches_unmerged_and_unmerge_restores_bit_for_bit(am, ids):
    """
    Merged logits equal unmerged within 1e-5; other selections stay exact while merged; unmerge restores the weights exactly.
    """
    weights_before = {n: p.detach().clone() for n, p in am.model.named_parameters()}
    with torch.no_grad():
        with am.using("a"):
            unmerged = am.model(ids).logits
        with am.using("b"):
            b_only = am.model(ids).logits
        am.merge("a")
        with am.using("a"):
            merged = am.model(ids).logits
        with am.using("b"):
            b_while_merged = am.model(ids).logits
    am.unmerge()

    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(b_while_merged, b_only, atol=1e-5, rtol=0)
    assert all(torch.equal(weights_before[n], p) for n, p in am.model.named_parameters())


def test_merged_adapter_cannot_be_unloaded(am):
    """
    Unloading a merged adapter is refused with the fix.
    """
    am.merge("a")

    with pytest.raises(AdapterInUseError, match="unmerge"):
        am.unload_adapter("a")


def test_unmerge_with_nothing_merged_warns():
    """
    unmerge() with nothing merged changes nothing and warns instead of raising.
    """
    am = attach(tiny_llama())

    with pytest.warns(UserWarning, match="nothing is merged"):
        am.unmerge()


def test_conv1d_merge_respects_fan_in_fan_out(tmp_path, ids):
    """
    GPT-2's Conv1D weights are (in, out); merging transposes the delta, so merged equals unmerged.
    """
    torch.manual_seed(0)
    peft_model = get_peft_model(
        tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "g")
    model = tiny_gpt2()
    am = attach(model)
    am.load_adapter("g", tmp_path / "g")
    am.set_active("g")
    with torch.no_grad():
        unmerged = model(ids).logits
        am.merge("g")
        merged = model(ids).logits

    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_unload_frees_and_forgets(am):
    """
    After unload the adapter is gone from the list and can be loaded again under the same name.
    """
    am.unload_adapter("b")

    assert ("a", "c") == am.adapters
    with pytest.raises(AdapterNotFoundError):
        am.set_active("b")


def test_duplicate_and_invalid_names_are_refused(am, tmp_path):
    """
    Loading under a loaded name, or a name with path or selection syntax, is refused.
    """
    with pytest.raises(AdapterExistsError):
        am.load_adapter("a", tmp_path / "a")
    for bad in ("../x", "a+b", "a:1", "", "base", "x/y"):
        with pytest.raises(InvalidNameError):
            am.load_adapter(bad, tmp_path / "a")


def test_adapter_for_modules_the_model_lacks_is_refused_and_nothing_changes(tmp_path, ids):
    """
    An adapter with keys for modules the model does not have names them; the model is unchanged.
    """
    _peft_adapter(tmp_path / "a", layers=6)  # layers 4 and 5 do not exist in a 4-layer model
    model = tiny_llama(layers=4)
    am = attach(model)

    with pytest.raises(AdapterMismatchError, match=r"does not have: model\.layers\.4"):
        am.load_adapter("a", tmp_path / "a")
    assert () == am.adapters
    assert all(not w.loras for w in model.modules() if isinstance(w, LoraLayer))


def test_adapter_with_wrong_shapes_is_refused(tmp_path):
    """
    Shapes that do not fit name the module, the tensor and both sizes.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(wide, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(tmp_path / "w")
    am = attach(tiny_llama())

    with pytest.raises(AdapterMismatchError, match=r"q_proj: lora_A is \(2, 64\) but .* takes 32 inputs"):
        am.load_adapter("w", tmp_path / "w")


def test_adapter_keys_without_prefix_or_with_adapter_name_load(tmp_path, ids):
    """
    Keys without 'base_model.model.', with a doubled prefix, or with '.default.' inside load the same.
    """
    from safetensors.torch import load_file, save_file

    src = _peft_adapter(tmp_path / "a")
    state = load_file(src / "adapter_model.safetensors")
    model = tiny_llama(layers=4)
    am = attach(model)
    am.load_adapter("a", src)
    outputs = []
    for i, rewrite in enumerate((
        lambda k: k.removeprefix("base_model.model."),
        lambda k: "base_model.model." + k,
        lambda k: k.replace(".weight", ".default.weight"),
    )):
        variant = tmp_path / f"v{i}"
        variant.mkdir()
        (variant / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
        save_file({rewrite(k): v for k, v in state.items()}, variant / "adapter_model.safetensors")
        am.load_adapter(f"v{i}", variant)
    with torch.no_grad():
        with am.using("a"):
            expected = model(ids).logits
        for i in range(3):
            with am.using(f"v{i}"):
                outputs.append(model(ids).logits)

    assert all(torch.equal(expected, o) for o in outputs)


def test_resident_bytes_equal_tensor_bytes(am):
    """
    A loaded adapter holds its tensors once: resident bytes equal the report's tensor bytes.
    """
    report = am.report("a")

    assert report.bytes == am.resident_bytes("a")
    assert report.params * 4 == report.bytes


def test_fresh_adapter_is_trainable_and_starts_as_a_no_op(ids):
    """
    add_adapter creates PEFT-initialised tensors (B zero: no effect yet) that receive gradients.
    """
    model = tiny_llama(layers=4)
    am = attach(model)
    am.add_adapter("t", LoraSpec(r=4, alpha=8, roles=("attn.q", "attn.v"), layers="middle"))
    with torch.no_grad():
        base = model(ids).logits
    with am.using("t"):
        out = model(ids).logits
        out.sum().backward()

    assert torch.equal(base, out.detach())
    assert all(t.grad is not None for t in am.adapter_parameters("t"))
    assert {1, 2} == {m.layer for m in am.report("t").modules}


def test_remote_code_phi_fused_adapter_splits_exactly_onto_native_phi(tmp_path, ids):
    """
    A LoRA on remote-code Phi's fused mixer.Wqkv lands on q/k/v_proj with B split row-wise: equal to the fused maths.
    """
    from safetensors.torch import save_file

    from adaptrix_core.testing import tiny_phi

    model = tiny_phi()
    hidden = 32
    torch.manual_seed(0)
    A = torch.randn(4, hidden)  # noqa: N806
    B = torch.randn(3 * hidden, 4)  # noqa: N806
    adapter = tmp_path / "legacy"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["Wqkv"], "base_model_name_or_path": "microsoft/phi-2"}'
    )
    save_file(
        {"base_model.model.transformer.h.0.mixer.Wqkv.lora_A.weight": A,
         "base_model.model.transformer.h.0.mixer.Wqkv.lora_B.weight": B},
        adapter / "adapter_model.safetensors",
    )
    am = attach(model)
    report = am.load_adapter("legacy", adapter)
    x = torch.randn(2, hidden)
    fused_delta = (x @ A.T @ B.T) * 2.0
    with torch.no_grad(), am.using("legacy"):
        parts = [
            am.model.get_submodule(f"model.layers.0.self_attn.{p}")(x)
            - am.model.get_submodule(f"model.layers.0.self_attn.{p}").base_layer(x)
            for p in ("q_proj", "k_proj", "v_proj")
        ]

    assert 3 == len(report.modules)
    torch.testing.assert_close(torch.cat(parts, dim=-1), fused_delta, atol=1e-5, rtol=0)
    assert am.report("legacy").bytes == am.resident_bytes("legacy")


def test_fresh_adapter_default_roles_follow_the_architecture():
    """
    With no roles named, a fresh adapter adapts attn.q + attn.v where they are separate (LLaMA) and attn.qkv
    where they are fused (GPT-2).
    """
    llama = attach(tiny_llama()).add_adapter("a")
    gpt2 = attach(tiny_gpt2()).add_adapter("a")

    assert {"attn.q", "attn.v"} == {m.role for m in llama.modules}
    assert {"attn.qkv"} == {m.role for m in gpt2.modules}


def test_split_roles_on_a_fused_model_name_the_roles_and_attn_qkv():
    """
    Asking GPT-2 for attn.q/attn.v fails naming the roles that exist and suggesting attn.qkv.
    """
    am = attach(tiny_gpt2())

    with pytest.raises(SelectionError) as info:
        am.add_adapter("a", LoraSpec(roles=("attn.q", "attn.v")))

    message = str(info.value)
    assert "wrapped roles: ['attn.o', 'attn.qkv', 'mlp.down', 'mlp.up']" in message
    assert "use attn.qkv" in message
