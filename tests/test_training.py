"""Training: dataset checks, response-only loss, determinism, interrupt and resume, the train command."""

from __future__ import annotations

import json

import pytest


PIRATE_ROWS = [
    {"prompt": "How do I boil an egg?", "response": "Arr, matey! Boil it for nine minutes, ye landlubber."},
    {"prompt": "Why is the sky blue?", "response": "Arr, matey! The air scatters blue light, savvy?"},
    {"prompt": "What is a good breakfast?", "response": "Arr, matey! Oats with fruit, me hearty."},
    {"prompt": "How do I cook rice?", "response": "Arr, matey! Boil it in twice the water, ye scallywag."},
]


@pytest.fixture(name="tokenizer", scope="module")
def _tokenizer(lm_helpers):
    """The real GPT-2 BPE tokenizer with a ChatML chat template (no download)."""
    return lm_helpers.gpt2_tokenizer()


@pytest.fixture(name="dataset")
def _dataset(tmp_path):
    """A four-example pirate dataset on disk."""
    path = tmp_path / "pirate.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PIRATE_ROWS), encoding="utf-8")
    return path


def _fresh(lm_helpers):
    from adaptrix_core import attach

    return attach(lm_helpers.tiny_gpt2_lm(n_positions=128))


def _options(**changes):
    from adaptrix_core.training import TrainOptions

    base = {"r": 4, "alpha": 8, "roles": ("attn.qkv", "mlp.up"), "layers": "all", "lr": 1e-2, "steps": 6,
            "batch_size": 2, "warmup": 1, "max_length": 64}
    return TrainOptions(**{**base, **changes})


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# dataset ------------------------------------------------------------------------------


def test_reads_prompt_response_and_chat_messages(tmp_path):
    """Both line formats parse; with messages, the last assistant message is the response."""
    from adaptrix_core.training import read_dataset

    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}]}
    path = _write(tmp_path, [json.dumps(PIRATE_ROWS[0]), "", json.dumps(chat)])

    examples = read_dataset(path)

    assert [("How do I boil an egg?", PIRATE_ROWS[0]["response"]), ("Hi", "Hello!")] == [
        (e.prompt, e.response) for e in examples
    ]
    assert (f"{path}:1", f"{path}:3") == (examples[0].source, examples[1].source)
    assert ("system", "user") == tuple(m["role"] for m in examples[1].messages)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"prompt": "hi"}', "field 'response' is missing"),
        ('{"prompt": "hi", "response": 3}', "field 'response' must be a non-empty string"),
        ('{"prompt": "", "response": "x"}', "field 'prompt' must be a non-empty string"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "field 'messages' must be a list of at least two"),
        ('{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
         "field 'messages[0].role' is 'robot'"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}',
         "field 'messages[1].role' must be 'assistant'"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
         "field 'messages[1].content' must be a non-empty string"),
        ('{"prompt": "hi", "response": "x", "accept": "y"}', "field 'accept' must be a list of non-empty strings"),
        ('{"prompt": "hi", "response": "x", "accept": ["y", ""]}', "field 'accept' must be a list of non-empty"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, fragment):
    """A bad line is a TrainingError naming file:line and what is wrong with which field."""
    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import read_dataset

    path = _write(tmp_path, [json.dumps(PIRATE_ROWS[0]), line])

    with pytest.raises(TrainingError) as info:
        read_dataset(path)

    assert f"{path}:2" in str(info.value)
    assert fragment in str(info.value)


def test_missing_and_empty_datasets_are_errors(tmp_path):
    """A missing file and a file with no examples both say so."""
    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import read_dataset

    empty = _write(tmp_path, ["", "  "])

    with pytest.raises(TrainingError, match="dataset file not found"):
        read_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(TrainingError, match="has no examples"):
        read_dataset(empty)


# encoding and the loss ------------------------------------------------------------------------


def test_response_tokens_follow_the_chat_template(tokenizer):
    """With a chat template, the prompt is the template up to the assistant turn; the response ends with <|im_end|>."""
    from adaptrix_core.training import Example, encode_example

    example = Example(({"role": "user", "content": "Hi there"},), "Arr, matey!")

    encoded = encode_example(example, tokenizer, 128)

    assert "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n" == tokenizer.decode(encoded.ids[: encoded.start])
    assert "Arr, matey!<|im_end|>\n" == tokenizer.decode(encoded.ids[encoded.start :])


def test_without_a_chat_template_the_response_ends_with_eos(lm_helpers):
    """Without a template: prompt + newline, then the response and EOS."""
    from adaptrix_core.training import Example, encode_example

    plain = lm_helpers.gpt2_tokenizer(chat_template=False)
    example = Example(({"role": "user", "content": "Hi"},), "Arr")

    encoded = encode_example(example, plain, 128)

    assert ("Hi\n", "Arr" + plain.eos_token) == (
        plain.decode(encoded.ids[: encoded.start]), plain.decode(encoded.ids[encoded.start :])
    )


def test_prompt_longer_than_max_length_is_an_error(tokenizer):
    """A prompt that leaves no room for the response names the example and the fix."""
    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import Example, encode_example

    example = Example(({"role": "user", "content": "word " * 50},), "x", "data.jsonl:7")

    with pytest.raises(TrainingError, match=r"data.jsonl:7: the prompt is \d+ tokens.*--max-length"):
        encode_example(example, tokenizer, 16)


def test_loss_covers_response_tokens_only(lm_helpers, tokenizer):
    """response_loss equals cross-entropy of the full logits at exactly the response positions."""
    import torch

    from adaptrix_core.training import Example, encode_example, response_loss

    model = lm_helpers.tiny_gpt2_lm(n_positions=128)
    batch = [
        encode_example(Example(({"role": "user", "content": r["prompt"]},), r["response"]), tokenizer, 64)
        for r in PIRATE_ROWS[:2]
    ]
    loss, count = response_loss(model, batch, pad_id=0)

    logits, targets = [], []
    for e in batch:
        ids = torch.tensor([e.ids])
        out = model(ids).logits[0]
        logits.append(out[e.start - 1 : len(e.ids) - 1])
        targets.append(ids[0, e.start :])
    expected = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets))

    assert sum(len(e.ids) - e.start for e in batch) == count
    assert torch.allclose(expected, loss, atol=1e-5)


# training ---------------------------------------------------------------------------------


def test_loss_goes_down_and_the_adapter_changes_the_model(lm_helpers, tokenizer, dataset):
    """A few steps on a tiny model lower the loss; the trained adapter changes the logits."""
    import torch

    from adaptrix_core.training import read_dataset, train_adapter

    am = _fresh(lm_helpers)
    ids = torch.tensor([[1, 2, 3, 4]])
    base = am.model(ids).logits

    result = train_adapter(am, tokenizer, read_dataset(dataset), "pirate", _options(steps=12), progress=False)

    with am.using("pirate"), torch.no_grad():
        adapted = am.model(ids).logits
    assert result.losses[-1] < result.losses[0]
    assert 12 == len(result.losses)
    assert not torch.allclose(base, adapted)
    assert not any(t.requires_grad for t in am.adapter_parameters("pirate"))


def test_same_seed_same_adapter_other_seed_differs(lm_helpers, tokenizer, dataset):
    """Two runs with one seed give identical tensors; another seed gives different ones."""
    import torch

    from adaptrix_core.training import read_dataset, train_adapter

    examples = read_dataset(dataset)
    runs = []
    for seed in (0, 0, 1):
        am = _fresh(lm_helpers)
        result = train_adapter(am, tokenizer, examples, "a", _options(seed=seed), progress=False)
        runs.append(([t.clone() for t in am.adapter_parameters("a")], result.losses))

    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(x, y) for x, y in zip(runs[0][0], runs[1][0]))
    assert not all(torch.equal(x, y) for x, y in zip(runs[0][0], runs[2][0]))


def test_schedule_is_seeded_and_covers_each_epoch():
    """Each epoch is a permutation of the data; the order depends on the seed only."""
    from adaptrix_core.training import schedule

    steps = schedule(6, _options(batch_size=3, seed=5), 4)
    flat = [i for batch in steps for i in batch]

    assert [sorted(flat[:6]), sorted(flat[6:])] == [list(range(6))] * 2
    assert steps == schedule(6, _options(batch_size=3, seed=5), 4)
    assert steps != schedule(6, _options(batch_size=3, seed=6), 4)


def test_interrupt_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_ends(
    lm_helpers, tokenizer, dataset, tmp_path
):
    """Ctrl-C after step 3 writes a checkpoint; resuming gives the same weights and losses as one run."""
    import torch

    from adaptrix_core.training import STATE_NAME, TrainingInterrupted, read_dataset, train_adapter

    examples = read_dataset(dataset)
    am = _fresh(lm_helpers)
    reference = train_adapter(am, tokenizer, examples, "a", _options(), progress=False)
    expected = [t.clone() for t in am.adapter_parameters("a")]

    def stop_after_three(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    am = _fresh(lm_helpers)
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted) as info:
        train_adapter(am, tokenizer, examples, "a", _options(), checkpoint_dir=checkpoint, progress=False,
                      on_step=stop_after_three)

    assert (checkpoint, 3) == (info.value.checkpoint, info.value.step)
    assert f"--resume {checkpoint}" in str(info.value)
    assert (checkpoint / STATE_NAME).is_file()
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    assert "a" not in am.adapters

    resumed = train_adapter(am, tokenizer, examples, "a", _options(), resume=checkpoint, progress=False)

    assert reference.losses == resumed.losses
    assert 3 == resumed.resumed_from
    assert all(torch.allclose(x, y, atol=1e-7) for x, y in zip(expected, am.adapter_parameters("a")))


def test_resume_with_other_options_is_refused(lm_helpers, tokenizer, dataset, tmp_path):
    """A checkpoint only resumes the run it came from (same options, same data)."""
    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import TrainingInterrupted, read_dataset, train_adapter

    examples = read_dataset(dataset)

    def stop(step, loss):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_adapter(_fresh(lm_helpers), tokenizer, examples, "a", _options(), checkpoint_dir=tmp_path / "c",
                      progress=False, on_step=stop)

    with pytest.raises(TrainingError, match=r"different options \(lr\)"):
        train_adapter(_fresh(lm_helpers), tokenizer, examples, "a", _options(lr=0.5), resume=tmp_path / "c",
                      progress=False)
    with pytest.raises(TrainingError, match="different dataset"):
        train_adapter(_fresh(lm_helpers), tokenizer, examples[:2], "a", _options(), resume=tmp_path / "c",
                      progress=False)
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        train_adapter(_fresh(lm_helpers), tokenizer, examples, "a", _options(), resume=tmp_path, progress=False)


def test_refused_resume_leaves_no_adapter_behind(lm_helpers, tokenizer, dataset, tmp_path):
    """A checkpoint file without the trainer's fields is refused by name, and the model keeps no half-made adapter."""
    import torch

    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import STATE_NAME, read_dataset, train_adapter

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"step": 1}, foreign / STATE_NAME)
    am = _fresh(lm_helpers)

    with pytest.raises(TrainingError, match=r"missing field\(s\) options"):
        train_adapter(am, tokenizer, read_dataset(dataset), "a", _options(), resume=foreign, progress=False)
    assert () == am.adapters


def test_unknown_role_is_a_training_error(lm_helpers, tokenizer, dataset):
    """Asking for a role the architecture does not wrap names the roles it has."""
    from adaptrix_core.exceptions import TrainingError
    from adaptrix_core.training import read_dataset, train_adapter

    with pytest.raises(TrainingError, match="wrapped roles"):
        train_adapter(_fresh(lm_helpers), tokenizer, read_dataset(dataset), "a", _options(roles=("attn.q",)),
                      progress=False)


# the command -----------------------------------------------------------------------------


def _invoke(args):
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app

    return CliRunner().invoke(make_app(), args)


def test_train_command_installs_a_peft_adapter_with_metadata(tiny_lm_dir, dataset, tmp_path):
    """
    `adaptrix train` saves a PEFT adapter into the library with description, tags, examples, metric and the
    thread count it ran at.
    """
    import torch

    from adaptrix_core.library import Library
    from adaptrix_core.peft_format import read_adapter

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"description": "Talks like a pirate.", "capabilities": ["pirate"], "domain": "style",
                                "examples": ["Ahoy?"], "metric": "pirate"}), encoding="utf-8")

    result = _invoke(["train", str(dataset), "--name", "pirate-test", "--model", str(tiny_lm_dir), "--targets",
                      "attn.qkv", "--layers", "all", "--rank", "4", "--steps", "2", "--batch-size", "2",
                      "--metadata", str(meta), "--no-progress"])

    assert 0 == result.exit_code, result.output
    library = Library(shipped_dir=tmp_path / "none")
    info = library.get("pirate-test")
    metadata = library.metadata("pirate-test")
    parsed = read_adapter(info.path)
    assert ("Talks like a pirate.", ("pirate",), "style", ("Ahoy?",)) == (
        info.description, info.capabilities, info.domain, info.examples
    )
    assert "pirate" == metadata["extra"]["metric"]
    assert 2 == metadata["extra"]["training"]["steps"]
    assert torch.get_num_threads() == metadata["extra"]["training"]["threads"]
    assert (4, ["c_attn"]) == (parsed.config.r, sorted({m.rsplit(".", 1)[-1] for m in parsed.modules}))


def test_train_command_output_folder_has_adaptrix_json(tiny_lm_dir, dataset, tmp_path):
    """--output writes a shippable folder: PEFT files plus adaptrix.json."""
    out = tmp_path / "adapters" / "p"

    result = _invoke(["train", str(dataset), "--name", "p", "--model", str(tiny_lm_dir), "--targets", "attn.qkv",
                      "--layers", "all", "--steps", "1", "--batch-size", "2", "--output", str(out), "--no-progress"])

    assert 0 == result.exit_code, result.output
    assert ["adapter_config.json", "adapter_model.safetensors", "adaptrix.json"] == sorted(p.name for p in out.iterdir())
    assert "p" == json.loads((out / "adaptrix.json").read_text())["name"]


def test_train_command_bad_dataset_is_one_line(tiny_lm_dir, tmp_path):
    """A bad dataset line ends the command with one error line naming file:line, before the model loads."""
    path = _write(tmp_path, ['{"prompt": "hi"}'])

    result = _invoke(["train", str(path), "--name", "x", "--model", str(tiny_lm_dir)])

    assert 1 == result.exit_code
    assert f"{path}:1: field 'response' is missing" in result.output


def test_second_ctrl_c_marks_a_hard_abort():
    """The first Ctrl-C asks for a clean stop; the second raises at once and marks the run aborted (no checkpoint)."""
    from adaptrix_core.training import _StopFlag

    flag = _StopFlag()
    flag._handle(2, None)
    with pytest.raises(KeyboardInterrupt):
        flag._handle(2, None)

    assert (True, True) == (flag.requested, flag.aborted)


def test_auto_targets_resolve_to_the_model_default_and_are_recorded(lm_helpers, tokenizer, dataset):
    """
    `--targets auto` (empty roles) trains attn.qkv on GPT-2, and the result records the resolved roles.
    """
    from adaptrix_core.training import TrainOptions, read_dataset, train_adapter

    am = _fresh(lm_helpers)

    result = train_adapter(am, tokenizer, read_dataset(dataset), "a", _options(roles="auto", steps=2), progress=False)

    assert () == TrainOptions(roles="auto").roles
    assert ("attn.qkv",) == result.options.roles
    assert {"attn.qkv"} == {m.role for m in am.report("a").modules}


@pytest.mark.parametrize(
    ("n", "changes", "fragments"),
    [
        (30, {"steps": 20}, ["fewer than the 40", "warm-up (10 steps) is half"]),
        (30, {"steps": 0, "epochs": 3}, ["12 steps is fewer than the 40", "warm-up (10 steps) is half"]),
        (224, {"steps": 40}, []),
        (10, {"steps": 200}, ["seen about 160 times"]),
    ],
)
def test_step_warnings_follow_the_recorded_runs(n, changes, fragments):
    """
    20 steps on 30 examples (the run that taught nothing) warns; pirate's 40 steps on 224 does not; a tiny
    set repeated 160 times warns about memorising.
    """
    from adaptrix_core.training import TrainOptions, step_warnings

    options = TrainOptions(**{"batch_size": 8, "warmup": 10, **changes})

    warnings = step_warnings(n, options)

    assert len(fragments) == len(warnings), warnings
    assert all(any(f in w for w in warnings) for f in fragments)


def test_train_command_defaults_to_attn_qkv_on_gpt2_and_warns_about_a_short_run(tiny_lm_dir, dataset, tmp_path):
    """Without --targets, GPT-2 trains attn.qkv; 2 steps on 4 examples warns before training starts."""
    out = tmp_path / "p"

    result = _invoke(["train", str(dataset), "--name", "p", "--model", str(tiny_lm_dir), "--layers", "all",
                      "--steps", "2", "--batch-size", "2", "--output", str(out), "--no-progress"])

    assert 0 == result.exit_code, result.output
    assert "targets=attn.qkv" in result.output
    assert "2 steps is fewer than the 40" in " ".join(result.output.split())
    assert ["attn.qkv"] == json.loads((out / "adaptrix.json").read_text())["extra"]["training"]["options"]["roles"]
