"""`adaptrix route`, `route-eval` and `merge`, and the routing helpers behind them."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch

from typer.testing import CliRunner

from adaptrix_core import hookimpl
from adaptrix_core.cli import make_app
from adaptrix_core.exceptions import NotRegisteredError, RoutingError
from adaptrix_core.library import Library
from adaptrix_core.routing import (
    BASE_LABEL,
    EvalItem,
    evaluate,
    percentile,
    read_eval_set,
    route,
    route_report,
    routing_to_dict,
)
from adaptrix_core.types import AdapterInfo, RouteCandidate, Routing


DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
SHIPPED_INFOS = Library(ROOT / "no-user-library", shipped_dir=ROOT / "adapters").list()
"""The shipped adapters' own adaptrix.json metadata (what users route over), never a copy."""
ROUTING_FIELDS = ("description", "capabilities", "domain", "examples", "counter_examples")


@pytest.fixture(name="library")
def _library(monkeypatch, tmp_path):
    """
    The configured library holding the four shipped adapters' routing metadata on tiny random tensors
    (merging them must not touch the real weights), and no shipped ones.
    """
    from adaptrix_core.peft_format import write_adapter

    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    library = Library()
    for i, info in enumerate(SHIPPED_INFOS):
        torch.manual_seed(i)
        modules = {f"model.layers.{k}.self_attn.q_proj": (torch.randn(2, 16), torch.randn(16, 2)) for k in range(2)}
        config = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
        peft_dir = write_adapter(tmp_path / "peft" / info.name, config, modules)
        library.install(info.name, peft_dir, **{f: getattr(info, f) for f in ROUTING_FIELDS})
    return library


def _run(pm, *args):
    return CliRunner().invoke(make_app(pm), list(args))


def test_route_json_names_the_choice_and_every_candidate(core_pm, library):
    """
    `adaptrix route --json` gives the choice, the weights and all four candidates with scores and reasons.
    """
    result = _run(core_pm, "route", "Please translate 'good night' into French", "--router", "keyword", "--json")

    assert 0 == result.exit_code, result.output
    data = json.loads(result.output)
    assert "french" == data["choice"]
    assert {"french": 1.0} == data["adapters"]
    assert "keyword" == data["router"]
    assert {"pirate", "json", "french", "arithmetic"} == {c["adapter"] for c in data["candidates"]}
    assert all(c["reason"] for c in data["candidates"])


def test_route_table_shows_the_decision(core_pm, library):
    """
    The human output lists candidates under labelled columns and ends with the router's decision.
    """
    result = _run(core_pm, "route", "Who painted the Mona Lisa?", "--router", "keyword")

    assert 0 == result.exit_code, result.output
    assert ["weight", "adapter", "score", "why"] == result.output.split()[:4]
    assert "arithmetic" in result.output
    assert "base model (no adapter)" in result.output


def test_route_report_is_plain_data_with_every_candidates_weight(core_pm, library):
    """
    route_report() (what a web UI shows) gives the choice, and every candidate's score, weight and reason.
    """
    report = route_report("Please translate 'good night' into French", "keyword", pm=core_pm)

    assert json.loads(json.dumps(report)) == report
    assert "french" == report["choice"]
    weights = {c["adapter"]: c["weight"] for c in report["candidates"]}
    assert {"french": 1.0, "json": 0.0, "pirate": 0.0, "arithmetic": 0.0} == weights
    assert routing_to_dict(route("Please translate 'good night' into French", "keyword", pm=core_pm)) == report


def test_route_unknown_router_is_one_line_error(core_pm, library):
    """
    An unknown router name fails with one line listing the registered routers.
    """
    result = _run(core_pm, "route", "hello", "--router", "nope")

    assert 1 == result.exit_code
    assert "'nope'" in result.output
    assert "keyword" in result.output
    assert "Traceback" not in result.output


def test_route_eval_json_reports_accuracy_confusion_and_latency(core_pm, library, tmp_path):
    """
    route-eval counts correct decisions, fills the confusion matrix and reports p50/p99 latency.
    """
    path = tmp_path / "eval.jsonl"
    rows = [
        {"query": "Translate 'thank you' into French", "expected": "french"},
        {"query": "Answer as a pirate, matey", "expected": "pirate"},
        {"query": "Who painted the Mona Lisa?", "expected": None},
        {"query": "Return a JSON object with the name", "expected": "arithmetic"},  # deliberately mislabelled
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    result = _run(core_pm, "route-eval", str(path), "--router", "keyword", "--json")

    assert 0 == result.exit_code, result.output
    data = json.loads(result.output)
    assert 4 == data["total"]
    assert 3 == data["correct"]
    assert 0.75 == data["accuracy"]
    assert {"french": 1} == data["confusion"]["french"]
    assert {BASE_LABEL: 1} == data["confusion"][BASE_LABEL]
    assert {"json": 1} == data["confusion"]["arithmetic"]
    assert [{"query": rows[3]["query"], "expected": "arithmetic", "predicted": "json"}] == data["mistakes"]
    assert data["p99_ms"] >= data["p50_ms"] > 0


def test_route_eval_prints_tables_on_the_shipped_set(core_pm, library):
    """
    On the shipped labelled set (>= 200 queries) the human output has the accuracy line and the matrix.
    """
    result = _run(core_pm, "route-eval", str(DATA / "routing_eval.jsonl"), "--router", "keyword", "--mistakes")

    assert 0 == result.exit_code, result.output
    assert "accuracy" in result.output
    assert "confusion matrix" in result.output
    assert "p99" in result.output


@pytest.mark.parametrize(("name", "size"), [("routing_eval.jsonl", 300), ("routing_heldout.jsonl", 130)])
def test_shipped_eval_sets_cover_every_kind_of_query(name, size):
    """
    Both labelled sets use the shipped adapters and hold plain requests, hard negatives, style in the
    query, symbols and other languages, without duplicates.
    """
    items = read_eval_set(DATA / name, SHIPPED_INFOS)

    assert len(items) >= size
    assert {"pirate", "json", "french", "arithmetic", None} == {i.expected for i in items}
    assert {"plain", "hard_negative", "style", "symbols", "multilingual"} == {i.kind for i in items}
    assert len(items) == len({i.query for i in items})


def test_held_out_set_shares_no_query_with_the_dev_set_or_the_metadata():
    """
    The held-out set is separate: none of its queries is in the dev set or in any adapter's (counter-)examples.
    """
    heldout = {i.query.lower() for i in read_eval_set(DATA / "routing_heldout.jsonl", SHIPPED_INFOS)}
    dev = {i.query.lower() for i in read_eval_set(DATA / "routing_eval.jsonl", SHIPPED_INFOS)}
    metadata = {t.lower() for a in SHIPPED_INFOS for t in (*a.examples, *a.counter_examples)}

    assert set() == heldout & dev
    assert set() == heldout & metadata


def test_counter_examples_round_trip_through_the_library(library):
    """
    Installing with counter_examples writes them to adaptrix.json, and listing reads them back.
    """
    listed = {a.name: a.counter_examples for a in library.list()}

    assert {a.name: a.counter_examples for a in SHIPPED_INFOS} == listed
    assert list(listed["json"]) == library.metadata("json")["counter_examples"]


def test_training_metadata_file_must_give_counter_examples_as_strings(tmp_path):
    """
    `adaptrix train --metadata` refuses counter_examples that are not a list of strings, naming the file.
    """
    from adaptrix_core.builtins.train_commands import _read_metadata_file
    from adaptrix_core.exceptions import TrainingError

    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"counter_examples": "What is JSON?"}), encoding="utf-8")

    with pytest.raises(TrainingError, match="'counter_examples' must be a list of strings"):
        _read_metadata_file(path)


def test_dataset_metadata_and_adaptrix_json_agree_on_routing_fields():
    """
    Training regenerates adaptrix.json from NAME.meta.json, so their routing fields must be the same.
    """
    for info in SHIPPED_INFOS:
        meta = json.loads((ROOT / "adapters" / "datasets" / f"{info.name}.meta.json").read_text(encoding="utf-8"))

        assert meta["examples"] == list(info.examples), info.name
        assert meta["counter_examples"] == list(info.counter_examples), info.name
        assert meta["description"] == info.description, info.name


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"expected": "french"}', "expected {"),
        ('{"query": "hi", "expected": 3}', "adapter name or null"),
        ('{"query": "hi", "expected": "klingon"}', "'klingon' is not available"),
    ],
)
def test_route_eval_bad_lines_name_file_and_line(core_pm, library, tmp_path, line, message):
    """
    A malformed evaluation line fails with the file, the line number and what is wrong.
    """
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "fine", "expected": null}\n' + line + "\n", encoding="utf-8")

    result = _run(core_pm, "route-eval", str(path), "--router", "keyword")

    assert 1 == result.exit_code
    assert f"{path}:2" in result.output
    assert message in result.output


def test_merge_command_installs_the_merge_with_lineage(core_pm, library):
    """
    `adaptrix merge` writes a PEFT adapter into the library, with lineage and the exactness verdict.
    """
    result = _run(
        core_pm, "merge", "pirate", "json", "--weights", "0.7,0.3", "--method", "cat", "--name", "pirate-json", "--json"
    )

    assert 0 == result.exit_code, result.output
    data = json.loads(result.output)
    assert data["exact"]
    assert 4 == data["rank"]
    lineage = library.metadata("pirate-json")["lineage"]
    assert ["pirate", "json"] == [i["name"] for i in lineage["inputs"]]
    assert [0.7, 0.3] == lineage["weights"]
    assert "cat" == lineage["method"]
    assert all(len(i["sha256"]) == 64 for i in lineage["inputs"])


def test_merge_command_reports_approximation(core_pm, library):
    """
    A truncated svd merge says it is approximate and prints the relative error.
    """
    result = _run(core_pm, "merge", "pirate", "json", "--method", "svd", "--rank", "1", "--name", "pj")

    assert 0 == result.exit_code, result.output
    assert "approximate" in result.output
    assert "relative Frobenius error" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ties"], "needs a density"),
        (["--weights", "1,x"], "comma-separated numbers"),
        (["--weights", "1"], "1 weight(s) for 2 adapter(s)"),
        (["--method", "bogus"], "unknown merge method"),
    ],
)
def test_merge_command_errors_are_one_line(core_pm, library, args, message):
    """
    Bad merge options fail with one line that names the fix, and install nothing.
    """
    result = _run(core_pm, "merge", "pirate", "json", "--name", "broken", *args)

    assert 1 == result.exit_code
    assert message in result.output
    assert "broken" not in library.names()


def test_merge_command_refuses_existing_name(core_pm, library):
    """
    Merging into a taken name fails before any work; --force replaces it.
    """
    assert 1 == _run(core_pm, "merge", "pirate", "json", "--name", "french").exit_code
    assert 0 == _run(core_pm, "merge", "pirate", "json", "--name", "pj").exit_code
    assert 0 == _run(core_pm, "merge", "pirate", "arithmetic", "--name", "pj", "--force").exit_code
    assert ["pirate", "arithmetic"] == [i["name"] for i in library.metadata("pj")["lineage"]["inputs"]]


def test_route_helper_uses_the_library_and_rejects_bad_decisions(core_pm, library):
    """
    route() routes over the library; a router that picks an unknown adapter is a RoutingError.
    """
    class Liar:
        name = "liar"

        def __init__(self, **options):
            pass

        def route(self, query, adapters, *, resident=()):
            return Routing({"ghost": 1.0}, router="liar")

    class Plugin:
        @hookimpl
        def register_routers(self):
            return [Liar]

    core_pm.register(Plugin(), name="liar-plugin")

    assert "json" == route("give me json", "keyword", pm=core_pm).choice
    with pytest.raises(RoutingError, match="unknown adapter"):
        route("anything", "liar", pm=core_pm)
    with pytest.raises(NotRegisteredError):
        route("anything", "missing", pm=core_pm)


def test_evaluate_with_a_scripted_router():
    """
    evaluate() builds the confusion matrix from each decision and times every call.
    """
    class Scripted:
        name = "scripted"

        def route(self, query, adapters, *, resident=()):
            choice = {"q1": "a", "q2": "b", "q3": None}[query]
            return Routing({choice: 1.0} if choice else {}, (RouteCandidate("a", 0.5),), "scripted")

    adapters = [AdapterInfo("a"), AdapterInfo("b")]
    items = [EvalItem("q1", "a", kind="plain"), EvalItem("q2", "a", kind="hard"), EvalItem("q3", None, kind="plain")]

    result = evaluate(Scripted(), items, adapters)

    assert ("a", "b", BASE_LABEL) == result.labels
    assert {"a": {"a": 1, "b": 1}, BASE_LABEL: {BASE_LABEL: 1}} == result.confusion
    assert 2 / 3 == result.accuracy
    assert 3 == len(result.latencies_ms)
    assert {"plain": (2, 2), "hard": (0, 1)} == result.kinds
    assert {"correct": 0, "total": 1, "accuracy": 0.0} == result.to_dict()["kinds"]["hard"]


def test_percentile_is_nearest_rank():
    """
    p50 and p99 use the nearest-rank definition.
    """
    values = list(range(1, 101))

    assert 50 == percentile(values, 50)
    assert 99 == percentile(values, 99)
    assert 7 == percentile([7], 99)
    assert 0.0 == percentile([], 50)
