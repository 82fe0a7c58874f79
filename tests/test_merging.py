"""Adapter composition: cat/linear/svd equal PEFT's add_weighted_adapter; TIES/DARE follow PEFT's merge_utils."""

from __future__ import annotations

import json

import pytest
import torch

from adaptrix_core.merging import MergeError, merge_adapters, merge_into_library, save_merged
from adaptrix_core.peft_format import read_adapter
from adaptrix_core.testing import tiny_gpt2, tiny_llama


def _peft_adapter(model_factory, directory, *, seed, r=4, alpha=8, targets=("q_proj", "v_proj"), **extra):
    """Save a PEFT LoRA adapter with random non-zero A and B for a fresh tiny model."""
    from peft import LoraConfig, get_peft_model

    model = model_factory()  # the factories seed torch themselves: seed the adapter after
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **extra)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", name="llama_adapters")
def _llama_adapters(tmp_path_factory):
    """Three LLaMA adapters with different random factors: two rank 4 (different alphas), one rank 6 on q/v/o."""
    root = tmp_path_factory.mktemp("llama-adapters")
    return {
        "a": _peft_adapter(tiny_llama, root / "a", seed=1, r=4, alpha=8),
        "b": _peft_adapter(tiny_llama, root / "b", seed=2, r=4, alpha=4),
        "c": _peft_adapter(tiny_llama, root / "c", seed=3, r=6, alpha=12, targets=("q_proj", "v_proj", "o_proj")),
    }


def _peft_merged_deltas(model_factory, dirs, weights, combination_type, **kwargs):
    """PEFT's add_weighted_adapter result as module name -> (out, in) delta weight."""
    from peft import PeftModel

    names = [f"in{i}" for i in range(len(dirs))]
    peft_model = PeftModel.from_pretrained(model_factory(), str(dirs[0]), adapter_name=names[0])
    for name, directory in zip(names[1:], dirs[1:], strict=True):
        peft_model.load_adapter(str(directory), adapter_name=name)
    peft_model.add_weighted_adapter(names, list(weights), "merged", combination_type=combination_type, **kwargs)
    deltas = {}
    for key, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "merged" in module.lora_A:
            delta = module.get_delta_weight("merged")
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            deltas[key.removeprefix("base_model.model.")] = delta.detach()
    return deltas


def _our_deltas(merged):
    return {m: (b.double() @ a.double()).float() for m, (a, b) in merged.modules.items()}


def _assert_same_deltas(expected, actual):
    assert expected, "no merged modules found"
    assert set(expected) == set(actual)
    for module, delta in expected.items():
        assert torch.allclose(delta, actual[module], atol=1e-5, rtol=0), module


@pytest.mark.parametrize(
    ("names", "weights", "method", "kwargs"),
    [
        (["a", "b"], [0.7, 0.3], "cat", {}),
        (["a", "b", "c"], [1.0, -0.5, 2.0], "cat", {}),
        (["a", "b"], [0.7, 0.3], "linear", {}),
        (["a", "b"], [1.5, -0.4], "linear", {}),
        (["a", "b"], [0.7, 0.3], "svd", {}),
        (["a", "c"], [0.6, 0.9], "svd", {"svd_rank": 3}),
        (["a", "b", "c"], [1.0, 1.0, 1.0], "svd", {"svd_rank": 8}),
        (["a", "b"], [0.7, 0.3], "ties", {"density": 0.5}),
        (["a", "b"], [1.0, 0.5], "ties", {"density": 0.3, "majority_sign_method": "frequency"}),
    ],
)
def test_matches_peft_add_weighted_adapter(llama_adapters, names, weights, method, kwargs):
    """
    Our merged adapter's delta per module equals PEFT add_weighted_adapter's for the same inputs within 1e-5.
    """
    dirs = [llama_adapters[n] for n in names]
    ours = merge_adapters(
        dirs, weights, method,
        rank=kwargs.get("svd_rank"), density=kwargs.get("density"),
        majority_sign_method=kwargs.get("majority_sign_method", "total"),
    )

    _assert_same_deltas(_peft_merged_deltas(tiny_llama, dirs, weights, method, **kwargs), _our_deltas(ours))


def test_gpt2_conv1d_merge_matches_peft(tmp_path):
    """
    GPT-2's Conv1D (fan_in_fan_out) adapters merge to the same deltas as PEFT's, for cat and svd.
    """
    dirs = [
        _peft_adapter(tiny_gpt2, tmp_path / f"g{i}", seed=i, targets=("c_attn", "c_fc"), fan_in_fan_out=True)
        for i in range(2)
    ]
    for method in ("cat", "svd"):
        ours = merge_adapters(dirs, [0.5, 1.5], method)

        _assert_same_deltas(_peft_merged_deltas(tiny_gpt2, dirs, [0.5, 1.5], method), _our_deltas(ours))


def test_cat_is_exact_and_reports_zero_error(llama_adapters):
    """
    cat equals the weighted sum of the inputs' scaled deltas, module by module, and says so.
    """
    a, c = read_adapter(llama_adapters["a"]), read_adapter(llama_adapters["c"])
    merged = merge_adapters([a, c], [0.25, -1.0], "cat")

    for module, (ma, mb) in merged.modules.items():
        expected = torch.zeros_like(mb @ ma)
        for parsed, w in ((a, 0.25), (c, -1.0)):
            if module in parsed.modules:
                t = parsed.modules[module]
                expected += w * parsed.config.scaling_for(module) * (t.B @ t.A)
        assert torch.allclose(expected, mb @ ma, atol=1e-6)
    assert merged.exact
    assert 10 == merged.rank  # 4 + 6 where both have the module
    assert merged.max_error < 1e-6


def test_approximate_methods_report_their_error(llama_adapters):
    """
    linear and truncated svd are approximations: the relative Frobenius error is reported per module.
    """
    dirs = [llama_adapters["a"], llama_adapters["b"]]
    linear = merge_adapters(dirs, [0.7, 0.3], "linear")
    svd_low = merge_adapters(dirs, [0.7, 0.3], "svd", rank=2)
    svd_full = merge_adapters(dirs, [0.7, 0.3], "svd", rank=8)

    assert set(linear.modules) == set(linear.errors)
    assert linear.max_error > 0.01
    assert not linear.exact
    assert svd_low.max_error > 0.01
    assert svd_full.max_error < 1e-5  # rank >= 4 + 4: the SVD keeps everything
    assert {"max_relative_error", "mean_relative_error", "exact", "worst_modules"} == set(linear.error_summary())


def test_dare_is_deterministic_with_a_seed(llama_adapters):
    """
    dare_linear and dare_ties give identical tensors for the same seed, different ones for another seed.
    """
    dirs = [llama_adapters["a"], llama_adapters["b"]]
    for method in ("dare_linear", "dare_ties"):
        one = merge_adapters(dirs, [0.7, 0.3], method, density=0.5, seed=1)
        two = merge_adapters(dirs, [0.7, 0.3], method, density=0.5, seed=1)
        other = merge_adapters(dirs, [0.7, 0.3], method, density=0.5, seed=2)

        assert all(torch.equal(one.modules[m][0], two.modules[m][0]) for m in one.modules)
        assert not all(torch.equal(one.modules[m][0], other.modules[m][0]) for m in one.modules)


def test_dare_at_full_density_equals_linear_and_ties(llama_adapters):
    """
    With density 1 nothing is dropped: dare_linear equals linear and dare_ties equals ties (PEFT semantics).
    """
    dirs = [llama_adapters["a"], llama_adapters["b"]]
    pairs = (("dare_linear", "linear"), ("dare_ties", "ties"))
    for dare, plain in pairs:
        got = merge_adapters(dirs, [0.7, 0.3], dare, density=1.0)
        want = merge_adapters(dirs, [0.7, 0.3], plain, density=1.0)

        _assert_same_deltas(_our_deltas(want), _our_deltas(got))


def test_dare_drops_about_one_minus_density_and_rescales(llama_adapters):
    """
    DARE keeps each entry with probability density and rescales kept entries by 1/density.
    """
    a = read_adapter(llama_adapters["a"])
    merged = merge_adapters([a, a], [1.0, 0.0], "dare_linear", density=0.25, seed=0)
    module = next(iter(merged.modules))
    s = a.config.scaling_for(module)
    kept = merged.modules[module][0]
    original = a.modules[module].A * s**0.5
    nonzero = kept != 0

    assert 0.1 < nonzero.float().mean().item() < 0.4
    assert torch.allclose(kept[nonzero], original[nonzero] / 0.25, atol=1e-6)


def test_ties_uses_peft_merge_utils_semantics():
    """
    TIES on hand-made factors: magnitude pruning, sign election by total, mean of the agreeing entries.
    """
    from peft.utils.merge_utils import ties

    from adaptrix_core.merging import _factorwise

    torch.manual_seed(0)
    factors = [(torch.randn(3, 5), torch.randn(4, 3), s) for s in (0.8, -0.6, 1.3)]
    a, b = _factorwise("ties", factors, "m", 0.4, 0, "total")
    w_a = torch.tensor([0.8**0.5, -(0.6**0.5), 1.3**0.5])
    w_b = torch.tensor([0.8**0.5, 0.6**0.5, 1.3**0.5])

    assert torch.allclose(ties([f[0] for f in factors], w_a, 0.4, "total"), a)
    assert torch.allclose(ties([f[1] for f in factors], w_b, 0.4, "total"), b)


def test_saved_merge_reads_back_and_loads_in_peft(llama_adapters, tmp_path):
    """
    The saved adapter is valid PEFT: read_adapter gives scaling 1 and the same deltas; PEFT loads it.
    """
    from peft import PeftModel

    merged = merge_adapters([llama_adapters["a"], llama_adapters["c"]], [1.0, 1.0], "cat")
    path = save_merged(merged, tmp_path / "merged")
    back = read_adapter(path)
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(path))

    assert set(merged.modules) == set(back.modules)
    for module, (a, b) in merged.modules.items():
        assert 1.0 == back.config.scaling_for(module, back.modules[module].rank)
        assert torch.allclose(b @ a, back.modules[module].B @ back.modules[module].A)
        peft_layer = peft_model.base_model.model.get_submodule(module)
        assert torch.allclose(b @ a, peft_layer.get_delta_weight("default"), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope"}, "unknown merge method"),
        ({"weights": [1.0]}, "1 weight"),
        ({"method": "ties"}, "needs a density"),
        ({"method": "ties", "density": 1.5}, "density must be"),
        ({"method": "linear", "names": ["a", "c"]}, "needs equal ranks"),
        ({"method": "svd", "rank": 0}, "rank must be"),
    ],
)
def test_bad_requests_fail_with_a_fix(llama_adapters, kwargs, message):
    """
    Invalid merges raise MergeError (an AdaptrixError) naming the problem.
    """
    names = kwargs.pop("names", ["a", "b"])
    args = {"weights": [0.5, 0.5], "method": "cat", **kwargs}
    with pytest.raises(MergeError, match=message):
        merge_adapters([llama_adapters[n] for n in names], args.pop("weights"), args.pop("method"), **args)


def test_merge_into_library_records_lineage(llama_adapters, tmp_path):
    """
    A merge installed in the library carries lineage: inputs with weights and sha256, method, error report.
    """
    from adaptrix_core.library import Library, sha256_of

    library = Library(tmp_path / "lib", shipped_dir=tmp_path / "none")
    for name in ("a", "b"):
        library.install(name, llama_adapters[name], description=f"adapter {name}", capabilities=[name])

    info, merged = merge_into_library(["a", "b"], [0.7, 0.3], "svd", "ab", library=library, rank=2)
    lineage = library.metadata("ab")["lineage"]

    assert "ab" == info.name
    assert ("a", "b") == info.capabilities
    assert "svd" == lineage["method"]
    assert [0.7, 0.3] == lineage["weights"]
    assert [sha256_of(llama_adapters["a"] / "adapter_model.safetensors"),
            sha256_of(llama_adapters["b"] / "adapter_model.safetensors")] == [i["sha256"] for i in lineage["inputs"]]
    assert merged.max_error == pytest.approx(lineage["error"]["max_relative_error"])
    assert 2 == json.loads((library.path("ab") / "adapter_config.json").read_text())["r"]


def test_rslora_inputs_merge_exactly_with_scaling_one(tmp_path):
    """
    rsLoRA inputs (scale alpha/sqrt(r)) merge exactly; the result has no rsLoRA and scaling 1 (PEFT keeps the
    first input's use_rslora, which rescales its merge by sqrt(r)).
    """
    dirs = [_peft_adapter(tiny_llama, tmp_path / f"rs{i}", seed=i, r=4, alpha=8, use_rslora=True) for i in range(2)]
    parsed = [read_adapter(d) for d in dirs]

    merged = merge_adapters(parsed, [1.0, 0.5], "cat")
    back = read_adapter(save_merged(merged, tmp_path / "merged"))

    assert merged.max_error < 1e-6
    assert back.config.use_rslora is False
    for module, (a, b) in merged.modules.items():
        expected = sum(w * p.config.scaling_for(module) * (p.modules[module].B @ p.modules[module].A)
                       for p, w in zip(parsed, (1.0, 0.5), strict=True))
        assert 8 / 4**0.5 == pytest.approx(parsed[0].config.scaling_for(module))
        assert torch.allclose(expected, b @ a, atol=1e-6)
        assert 1.0 == back.config.scaling_for(module, back.modules[module].rank)
