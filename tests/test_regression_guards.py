"""
Guards against bugs that once survived the whole suite when planted by hand.

Each test names the bug it catches. They check behaviour through the public
API against an independent reference (PEFT, a freshly built model, the file
on disk, the live tensors in the process), never against the code's own
bookkeeping.
"""

from __future__ import annotations

import gc
import os
import signal

import pytest
import torch

from peft import PeftModel

from adaptrix_core import attach
from adaptrix_core.exceptions import AdaptrixError
from adaptrix_core.runtime import LoraSpec
from adaptrix_core.testing import logits_row_by_row, tiny_gpt2, tiny_llama


def _ids(seed: int = 0, rows: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(1, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


def _randomise(am, name: str, seed: int, std: float = 0.2) -> None:
    """Give a fresh adapter non-zero A and B (a zero B would prove nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in am.adapter_parameters(name):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def _fresh_adapter_dir(factory, directory, *, roles, seed: int, r: int = 4, alpha: float = 8.0):
    """Write a PEFT adapter made with ``add_adapter`` (random non-zero weights) and return its directory."""
    am = attach(factory())
    am.add_adapter("x", LoraSpec(r=r, alpha=alpha, roles=roles), seed=seed)
    _randomise(am, "x", seed)
    am.save_adapter("x", directory)
    return directory


# runtime ------------------------------------------------------------------------------------


def test_fresh_rslora_adapter_scales_by_alpha_over_sqrt_r(tmp_path):
    """
    Bug guarded: a fresh rsLoRA adapter scaled by alpha/r. PEFT reads the saved
    config (use_rslora=True, alpha/sqrt(r)) and must see the logits we computed.
    """
    model = tiny_llama()
    am = attach(model)
    am.add_adapter("rs", LoraSpec(r=4, alpha=8, roles=("attn.q", "attn.v"), use_rslora=True), seed=1)
    _randomise(am, "rs", seed=1)
    am.save_adapter("rs", tmp_path / "rs")
    ids = _ids(1)
    with torch.no_grad(), am.using("rs"):
        ours = model(ids).logits

    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "rs").eval()
    with torch.no_grad():
        theirs = reloaded(ids).logits

    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert 8 / 2 == am.report("rs").modules[0].scaling


def test_conv1d_merge_transposes_square_modules(tmp_path):
    """
    Bug guarded: a Conv1D merge that transposes only when the shapes differ.
    GPT-2's attention c_proj is square (n_embd x n_embd), so only a merge that
    always honours fan_in_fan_out keeps merged logits equal to unmerged ones.
    """
    model = tiny_gpt2()
    am = attach(model)
    am.add_adapter("o", LoraSpec(r=4, alpha=8, roles=("attn.o",)), seed=2)
    _randomise(am, "o", seed=2)
    ids = _ids(2)
    with torch.no_grad():
        with am.using("o"):
            unmerged = model(ids).logits
        with am.using(None):
            base = model(ids).logits
    square = [m for m in am.report("o").modules if m.role == "attn.o"]
    assert square, "the test needs the square attention output projection"

    am.merge("o")
    with torch.no_grad():
        with am.using("o"):  # served from the merged weights, no adapter maths
            merged = model(ids).logits
        with am.using(None):  # the base model, exact while "o" is merged
            base_while_merged = model(ids).logits

    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(base_while_merged, base, atol=1e-5, rtol=0)


def test_reloading_a_name_with_other_coverage_forgets_old_plans(tmp_path):
    """
    Bug guarded: add_lora keeping stale plans. After unloading ``b`` and loading a
    different ``b`` (other modules, other weights), the composition {a, b} must
    equal a fresh model that only ever saw the new ``b``.
    """
    a_dir = _fresh_adapter_dir(tiny_llama, tmp_path / "a", roles=("attn.q", "attn.v"), seed=3)
    b_old = _fresh_adapter_dir(tiny_llama, tmp_path / "b-old", roles=("attn.q", "mlp.down"), seed=4)
    b_new = _fresh_adapter_dir(tiny_llama, tmp_path / "b-new", roles=("attn.v", "mlp.up"), seed=5)
    ids = _ids(3)
    pair = {"a": 1.0, "b": 1.0}

    model = tiny_llama()
    am = attach(model)
    am.load_adapter("a", a_dir)
    am.load_adapter("b", b_old)
    with torch.no_grad():
        for rows in (None, ["a", pair]):  # build uniform and per-row plans under the old b
            if rows is None:
                with am.using(pair):
                    model(ids)
            else:
                am.forward(ids, adapters=rows)
    am.unload_adapter("b")
    am.load_adapter("b", b_new)
    with torch.no_grad():
        with am.using(pair):
            reused = model(ids).logits
        reused_rows = am.forward(ids, adapters=["a", pair]).logits

    reference_model = tiny_llama()
    reference = attach(reference_model)
    reference.load_adapter("a", a_dir)
    reference.load_adapter("b", b_new)
    with torch.no_grad():
        with reference.using(pair):
            expected = reference_model(ids).logits
        expected_rows = reference.forward(ids, adapters=["a", pair]).logits

    torch.testing.assert_close(reused, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(reused_rows, expected_rows, atol=1e-6, rtol=0)


def test_rank_and_alpha_patterns_match_the_end_of_module_names_as_peft_does(tmp_path):
    """
    Bug guarded: pattern keys matched anywhere in the name. PEFT anchors a key at
    the end of the module name, so ``layers.1`` matches no module and
    ``1.self_attn.v_proj`` only layer 1's v_proj; logits must equal PEFT's.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(9)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        lora_dropout=0.0, rank_pattern={"layers.1": 2}, alpha_pattern={"1.self_attn.v_proj": 2.0})
    peft_model = get_peft_model(tiny_llama(), config).eval()
    peft_model.save_pretrained(tmp_path / "p")
    ids = _ids(9)
    with torch.no_grad():
        theirs = peft_model(ids).logits

    model = tiny_llama()
    am = attach(model)
    am.load_adapter("p", tmp_path / "p")
    with torch.no_grad(), am.using("p"):
        ours = model(ids).logits

    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert {4} == {m.r for m in am.report("p").modules}


def test_reloading_a_name_refreshes_the_mixed_batch_bank(tmp_path):
    """
    Bug guarded: the per-layer bank of stacked adapters keeping an unloaded adapter's slot, so a new
    adapter loaded under the same name (same shape, other weights) would serve the old tensors.
    """
    a_dir = _fresh_adapter_dir(tiny_llama, tmp_path / "a", roles=("attn.q", "attn.v"), seed=11)
    b_old = _fresh_adapter_dir(tiny_llama, tmp_path / "b-old", roles=("attn.q", "attn.v"), seed=12)
    b_new = _fresh_adapter_dir(tiny_llama, tmp_path / "b-new", roles=("attn.q", "attn.v"), seed=13)
    ids = _ids(11, rows=3)
    rows = ["a", "b", None]

    am = attach(tiny_llama())
    am.load_adapter("a", a_dir)
    am.load_adapter("b", b_old)
    with torch.no_grad():
        am.forward(ids, adapters=rows)  # fills the bank with a and the old b
        am.unload_adapter("b")
        am.load_adapter("b", b_new)
        reused = am.forward(ids, adapters=rows).logits

    reference = attach(tiny_llama())
    reference.load_adapter("a", a_dir)
    reference.load_adapter("b", b_new)
    with torch.no_grad():
        expected = reference.forward(ids, adapters=rows).logits

    torch.testing.assert_close(reused, expected, atol=1e-6, rtol=0)


def test_mixed_batch_with_the_wrong_number_of_rows_is_refused():
    """
    Bug guarded: the row-count check of mixed batches removed. A row list that
    does not match the batch must be refused, not broadcast or truncated.
    """
    model = tiny_llama()
    am = attach(model)
    am.add_adapter("a", LoraSpec(r=2, alpha=4), seed=0)
    am.add_adapter("b", LoraSpec(r=2, alpha=4), seed=1)
    ids = _ids(0, rows=3)

    with pytest.raises(AdaptrixError, match="2 rows"):
        am.forward(ids, adapters=["a", "b"])
    with pytest.raises(AdaptrixError), torch.no_grad(), am.using_rows(["a", "b"]):
        model(ids)


def test_merging_at_a_weight_folds_in_that_weight():
    """
    Bug guarded: merge() recording the weight but folding the adapter in at 1.0.
    Merged at 0.5, the selection {a: 0.5} must give the unmerged {a: 0.5} logits,
    and the base must stay the base.
    """
    model = tiny_llama()
    am = attach(model)
    am.add_adapter("a", LoraSpec(r=4, alpha=8, roles=("attn.q", "attn.v")), seed=7)
    _randomise(am, "a", seed=7)
    ids = _ids(7)
    with torch.no_grad():
        with am.using({"a": 0.5}):
            half = model(ids).logits
        with am.using(None):
            base = model(ids).logits

    am.merge("a", 0.5)
    with torch.no_grad():
        with am.using({"a": 0.5}):
            merged_half = model(ids).logits
        with am.using(None):
            base_while_merged = model(ids).logits

    torch.testing.assert_close(merged_half, half, atol=1e-5, rtol=0)
    torch.testing.assert_close(base_while_merged, base, atol=1e-5, rtol=0)


def test_selecting_an_adapter_that_is_not_loaded_is_refused():
    """
    Bug guarded: using()/set_active() accepting names that are not loaded, which
    would silently answer with the base model.
    """
    from adaptrix_core.exceptions import AdapterNotFoundError

    am = attach(tiny_llama())
    am.add_adapter("a", LoraSpec(r=2, alpha=4), seed=0)

    with pytest.raises(AdapterNotFoundError, match="'nope'"), am.using({"a": 1.0, "nope": 1.0}):
        pass
    with pytest.raises(AdapterNotFoundError, match="'nope'"):
        am.set_active("nope")
    with pytest.raises(AdapterNotFoundError, match="'nope'"), am.using_rows(["a", "nope"]):
        pass


@pytest.mark.parametrize("rows", [["a", "b", "c", None, "a"], [None, "c", "b", "a"], ["b", None, None, "c", "a", "b"]])
def test_many_adapter_mixed_batch_with_base_rows_equals_rows_alone(rows):
    """
    Bug guarded: base rows in a batch of three or more distinct adapters taking
    another row's adapter (the gathered path). Every row equals its run alone.
    """
    model = tiny_llama()
    am = attach(model)
    for seed, name in enumerate("abc"):
        am.add_adapter(name, LoraSpec(r=2 + seed, alpha=4, roles=("attn.q", "attn.v", "mlp.down")), seed=seed)
        _randomise(am, name, seed=seed + 10)
    ids = _ids(8, rows=len(rows))
    with torch.no_grad():
        mixed = am.forward(ids, adapters=rows).logits

    torch.testing.assert_close(mixed, logits_row_by_row(am, ids, rows), atol=1e-5, rtol=0)


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (an outside view of memory)."""
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def test_resident_bytes_counts_every_byte_the_adapter_keeps_alive(tmp_path):
    """
    Bug guarded: a hidden clone of every adapter tensor that resident_bytes never
    counts. The process's live tensor bytes may only grow by what resident_bytes
    reports, and that is at least the adapter file's tensor bytes.
    """
    from safetensors import safe_open

    directory = _fresh_adapter_dir(tiny_llama, tmp_path / "a", roles=("attn.q", "attn.v", "mlp.down"), seed=6)
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        file_bytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())  # noqa: SIM118
    model = tiny_llama()
    am = attach(model)
    before = _live_tensor_bytes()

    am.load_adapter("a", directory)
    grown = _live_tensor_bytes() - before

    assert am.resident_bytes("a") >= file_bytes
    assert grown <= am.resident_bytes("a")


# training -----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX SIGINT")
def test_second_ctrl_c_writes_no_checkpoint(lm_helpers, tmp_path):
    """
    Bug guarded: removing the second-Ctrl-C abort. Two real SIGINTs during a step
    abort at once: a plain KeyboardInterrupt, no checkpoint directory, and the
    half-trained adapter unloaded.
    """
    from adaptrix_core.training import TrainingInterrupted, TrainOptions, read_dataset, train_adapter

    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "response": "Arr, answer {i}."}}\n' for i in range(4)))
    am = attach(lm_helpers.tiny_gpt2_lm(n_positions=64))
    options = TrainOptions(r=2, alpha=4, roles=("attn.qkv",), layers="all", steps=5, batch_size=2, warmup=0,
                           max_length=32)
    checkpoint = tmp_path / "ckpt"

    def two_ctrl_c(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # first: finish the step, then checkpoint
            os.kill(os.getpid(), signal.SIGINT)  # second: abort now

    with pytest.raises(KeyboardInterrupt) as info:
        train_adapter(am, lm_helpers.gpt2_tokenizer(), read_dataset(data), "a", options, checkpoint_dir=checkpoint,
                      progress=False, on_step=two_ctrl_c)

    assert not isinstance(info.value, TrainingInterrupted)
    assert not checkpoint.exists()
    assert "a" not in am.adapters


# sampling -----------------------------------------------------------------------------------


@pytest.fixture(name="engine")
def _engine(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    library = Library(tmp_path / "lib", shipped_dir=tmp_path / "none")
    with AdaptrixEngine.from_model(model, tokenizer, library=library) as engine:
        yield engine


def test_sampling_with_temperature_is_not_greedy(engine):
    """
    Bug guarded: sampling that is always greedy. A tiny random model spreads its
    probability over a 50k vocabulary, so eight seeds at temperature 1 give
    several different answers, none forced to equal the greedy one.
    """
    greedy = engine.query("Hello", adapters=None, max_new_tokens=6)
    sampled = {engine.query("Hello", adapters=None, max_new_tokens=6, temperature=1.0, seed=s) for s in range(8)}

    assert len(sampled) >= 4
    assert sampled != {greedy}


def test_top_p_keeps_only_the_nucleus(engine):
    """
    Bug guarded: top_p ignored. With a nucleus smaller than the top token's
    probability only the top token survives, so sampling equals greedy for every seed.
    """
    greedy = engine.query("Hello", adapters=None, max_new_tokens=6)
    nucleus = {
        engine.query("Hello", adapters=None, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=s) for s in range(6)
    }

    assert {greedy} == nucleus


def test_the_same_seed_samples_the_same_answer(engine):
    """Sampling is reproducible per seed (and different seeds are free to differ)."""
    first = engine.query("Hello", adapters=None, max_new_tokens=6, temperature=1.0, seed=11)

    assert first == engine.query("Hello", adapters=None, max_new_tokens=6, temperature=1.0, seed=11)
