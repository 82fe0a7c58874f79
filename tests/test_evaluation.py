"""Evaluation: each metric's verdicts, the with/without report, and the eval command."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Arr, matey! Boil it for nine minutes.", True),
        ("Ahoy! Ye be needin' a pot.", True),
        ("Aye.", False),  # one word is not pirate talk
        ("Yesterday you were here.", False),  # "ye" inside "yesterday" does not count
        ("Boil the egg for nine minutes.", False),
    ],
)
def test_pirate_metric(output, expected):
    """Two different pirate words, matched as whole words."""
    from adaptrix_core.evaluation import score_pirate

    assert expected == score_pirate(output, "")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"name": "Alice", "age": 31}', True),
        ('  {"a": 1}\n', True),
        ('```json\n{"a": 1}\n```', False),  # a code fence is not a JSON answer
        ('Here it is: {"a": 1}', False),
        ("[1, 2]", False),  # valid JSON, not an object
        ('{"a": 1', False),
    ],
)
def test_json_metric(output, expected):
    """The whole answer must parse as one JSON object."""
    from adaptrix_core.evaluation import score_json

    assert expected == score_json(output, "")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Où est la gare ?", True),
        ("où est la gare?", True),  # case and the space before ? do not count
        ("Où est la gare", True),
        ("Ou est la gare ?", False),  # accents do
        ("Où est la plage ?", False),
        ("Où est la gare ?\nThis means: where is the station.", False),  # no trailing commentary
        ("", False),
    ],
)
def test_french_metric(output, expected):
    """Normalised exact match against the reference translation."""
    from adaptrix_core.evaluation import score_french

    assert expected == score_french(output, "Où est la gare ?")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("45 + 7: 45+1=46, ..., 45+7=52. The answer is 52.", True),
        ("52", True),
        ("The answer is 52 apples, from 7 boxes.", False),  # the last number must be the answer
        ("I think it is fifty-two.", False),
    ],
)
def test_arithmetic_metric(output, expected):
    """The last number written is exactly the reference's last number."""
    from adaptrix_core.evaluation import score_arithmetic

    assert expected == score_arithmetic(output, "45 + 7: ... The answer is 52.")


def test_unknown_metric_lists_the_known_ones():
    """An unknown metric name is an error that lists the metrics."""
    from adaptrix_core.evaluation import get_metric
    from adaptrix_core.exceptions import TrainingError

    with pytest.raises(TrainingError, match="pirate, json, french, arithmetic"):
        get_metric("vibes")


class _FakeEngine:
    """Answers like a pirate for rows with the adapter and plainly for the base model; records the calls."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, adapters, max_new_tokens):
        self.calls.append((list(prompts), list(adapters), max_new_tokens))
        return ["Arr, matey!" if a == "pirate" else "Hello." for a in adapters]


def test_evaluate_scores_both_sides_in_mixed_batches():
    """Each chunk runs once with the adapter and once without, in one batch; the scores count the verdicts."""
    from adaptrix_core.evaluation import evaluate
    from adaptrix_core.training import Example

    examples = [Example(({"role": "user", "content": f"q{i}"},), "Arr, matey!") for i in range(3)]
    engine = _FakeEngine()

    report = evaluate(engine, "pirate", examples, "pirate", batch_size=2)

    assert (1.0, 0.0, 3) == (report.with_score, report.without_score, report.n)
    assert [
        (["q0", "q1", "q0", "q1"], ["pirate", "pirate", None, None], 48),
        (["q2", "q2"], ["pirate", None], 48),
    ] == engine.calls
    assert {"adapter": "pirate", "metric": "pirate", "n": 3, "with_adapter": 1.0, "without_adapter": 0.0} == {
        k: v for k, v in report.to_dict().items() if k not in ("seconds", "max_new_tokens")
    }


def test_other_accepted_answers_count_as_right_on_either_side(tmp_path):
    """An example's "accept" list (a translation has more than one) is read from JSONL and scored like the reference."""
    from adaptrix_core.evaluation import evaluate
    from adaptrix_core.training import read_dataset

    data = tmp_path / "fr.jsonl"
    data.write_text(
        json.dumps({"prompt": "q0", "response": "Bonjour.", "accept": ["Hello."]}) + "\n"
        + json.dumps({"prompt": "q1", "response": "Bonjour."}) + "\n"
    )
    examples = read_dataset(data)

    report = evaluate(_FakeEngine(), "pirate", examples, "french")

    assert ((("Hello.",), ()), [(False, True), (False, False)]) == (
        tuple(e.accept for e in examples), [(r.ok_with, r.ok_without) for r in report.rows]
    )


def test_eval_command_runs_on_a_library_adapter(tiny_lm_dir, tiny_lm_library_dir, tmp_path, monkeypatch):
    """`adaptrix eval NAME --dataset F --metric json --json` prints n and both scores (a random tiny model scores 0)."""
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app

    monkeypatch.setenv("ADAPTRIX_LIBRARY_DIR", str(tiny_lm_library_dir))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    data = tmp_path / "held.jsonl"
    data.write_text(json.dumps({"prompt": "Alice is 31.", "response": '{"name": "Alice"}'}) + "\n", encoding="utf-8")

    result = CliRunner().invoke(make_app(), ["eval", "alpha", "--dataset", str(data), "--metric", "json", "--model",
                                             str(tiny_lm_dir), "--max-new-tokens", "4", "--json"])

    assert 0 == result.exit_code, result.output
    report = json.loads(result.stdout)
    assert (1, 0.0, 0.0) == (report["n"], report["with_adapter"], report["without_adapter"])


def test_eval_command_needs_a_metric(tiny_lm_library_dir, tmp_path, monkeypatch):
    """An adapter without a stored metric and no --metric is a one-line error naming the fix."""
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app

    monkeypatch.setenv("ADAPTRIX_LIBRARY_DIR", str(tiny_lm_library_dir))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    data = tmp_path / "held.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n", encoding="utf-8")

    result = CliRunner().invoke(make_app(), ["eval", "alpha", "--dataset", str(data)])

    assert 1 == result.exit_code
    assert "names no metric" in result.output
    assert "--metric" in result.output


def test_everyday_sets_stand_apart_from_the_generated_data():
    """Each shipped adapter's everyday sets (written by hand) share no prompt with its generated train or held-out set."""
    from pathlib import Path

    from adaptrix_core.demo import DEMO_ADAPTERS
    from adaptrix_core.training import read_dataset

    datasets = Path(__file__).resolve().parents[1] / "adapters" / "datasets"
    overlaps = {}
    sizes = {}
    for path in sorted((datasets / "everyday").glob("*.jsonl")):
        name = path.name.split(".")[0]
        everyday = {e.prompt for e in read_dataset(path)}
        generated = {e.prompt for split in ("train", "heldout") for e in read_dataset(datasets / f"{name}.{split}.jsonl")}
        overlaps[path.name] = sorted(everyday & generated)
        sizes[path.name] = len(everyday)

    assert ({n: [] for n in sizes}, {**{f"{n}.jsonl": 30 for n in DEMO_ADAPTERS}, "french.more.jsonl": 40}) == (
        overlaps, sizes
    )
