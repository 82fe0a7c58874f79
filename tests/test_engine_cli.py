"""
The everyday CLI: the session (load, switch, unload, active) across separate processes, query, chat, status.

The session flow runs real ``adaptrix`` processes, because the point is that
the active set survives between invocations; the rest uses Typer's runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from typer.testing import CliRunner

from adaptrix_core.cli import make_app


PROMPT = "Hello there, how are you?"


@pytest.fixture(name="one_thread", scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(name="reference", scope="module")
def _reference(tiny_lm_dir, tiny_lm_library_dir):
    """An in-process engine over the same model and library, for expected texts."""
    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library

    library = Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")
    with AdaptrixEngine(str(tiny_lm_dir), library=library) as engine:
        yield engine


@pytest.fixture(name="cli_env")
def _cli_env(tiny_lm_dir, tiny_lm_library_dir, monkeypatch):
    """Point the CLI at the tiny model and the test library (ADAPTRIX_HOME is already a fresh temp dir)."""
    monkeypatch.setenv("ADAPTRIX_BASE_MODEL", str(tiny_lm_dir))
    monkeypatch.setenv("ADAPTRIX_LIBRARY_DIR", str(tiny_lm_library_dir))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    return dict(os.environ)


def adaptrix(env, *args):
    """Run the real console script in its own process."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("adaptrix")), *args],
        env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout


def invoke(pm, *args, input=None):
    return CliRunner().invoke(make_app(pm), list(args), input=input)


def test_session_flow_across_processes(cli_env, reference):
    """load -> query -> switch -> query -> unload, each its own process, share the active set through the state file."""
    messages = [{"role": "user", "content": PROMPT}]
    expected = [reference.chat(messages, name, max_new_tokens=6) for name in ("alpha", "beta")]

    outputs = [
        adaptrix(cli_env, "load", "alpha").strip(),
        json.loads(adaptrix(cli_env, "query", PROMPT, "-n", "6", "--json")),
        adaptrix(cli_env, "switch", "alpha", "beta").strip(),
        json.loads(adaptrix(cli_env, "query", PROMPT, "-n", "6", "--json")),
        adaptrix(cli_env, "unload", "beta").strip(),
        json.loads(adaptrix(cli_env, "active", "--json"))["active"],
    ]

    assert [
        "Active: alpha",
        {"text": expected[0], "adapters": {"alpha": 1.0}, "finish_reason": "length", "completion_tokens": 6, "routing": None},
        "Active: beta",
        {"text": expected[1], "adapters": {"beta": 1.0}, "finish_reason": "length", "completion_tokens": 6, "routing": None},
        "Active: base model (no adapters)",
        {},
    ] == outputs


def test_query_streams_the_answer_with_composed_adapters(pm, cli_env, reference):
    """`query -a alpha:0.7 -a beta:0.3` prints what the engine answers with that composition."""
    result = invoke(pm, "query", PROMPT, "-a", "alpha:0.7", "-a", "beta:0.3", "-n", "6")

    assert (0, reference.query(PROMPT, {"alpha": 0.7, "beta": 0.3}, max_new_tokens=6) + "\n") == (
        result.exit_code, result.stdout
    )


def test_query_no_adapter_ignores_the_session(pm, cli_env, reference):
    """`--no-adapter` answers with the base model even when the session has active adapters."""
    invoke(pm, "load", "gamma")
    result = invoke(pm, "query", PROMPT, "--no-adapter", "-n", "6", "--raw")

    assert reference.query(PROMPT, None, max_new_tokens=6, chat_template=False) + "\n" == result.stdout


def test_query_route_reports_the_routers_choice(pm, cli_env, reference, monkeypatch):
    """`--route` lets the keyword router pick (here: the adapter the prompt names) and says so on stderr."""
    monkeypatch.setenv("ADAPTRIX_ROUTER", "keyword")  # the tiny adapters have one-line descriptions: route by name
    text = "answer in delta style"
    result = invoke(pm, "query", text, "--route", "-n", "5")

    assert (reference.query(text, "delta", max_new_tokens=5) + "\n", True) == (
        result.stdout, "[route] delta" in result.stderr
    )


def test_chat_switches_adapter_mid_conversation(pm, cli_env, reference):
    """In `chat`, `/adapter beta` makes the next answer come from beta, with the conversation so far."""
    result = invoke(pm, "chat", "-a", "alpha", "-n", "5", input="hi\n/adapter beta\nand now?\n/quit\n")
    first = reference.chat([{"role": "user", "content": "hi"}], "alpha", max_new_tokens=5)
    history = [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "and now?"},
    ]
    second = reference.chat(history, "beta", max_new_tokens=5)

    assert (0, f"> {first}\n> > {second}\n> ") == (result.exit_code, result.stdout)  # one prompt per line read


def test_status_reports_the_session_without_loading_the_model(pm, cli_env, tiny_lm_library_dir, monkeypatch):
    """`status --json` names the active set and each adapter's file, and never loads the base model."""
    monkeypatch.setenv("ADAPTRIX_BASE_MODEL", "/nonexistent/model")  # loading it would fail
    invoke(pm, "load", "alpha", "--weight", "0.5")
    result = invoke(pm, "status", "--json")
    status = json.loads(result.stdout)
    weights = tiny_lm_library_dir / "alpha" / "adapter_model.safetensors"

    assert (0, {"alpha": 0.5}, [{"name": "alpha", "weight": 0.5, "found": True, "shipped": False,
                                 "bytes": weights.stat().st_size, "path": str(weights.parent)}], None) == (
        result.exit_code, status["active"], status["adapters"], status["model_path"]
    )


def test_status_table_says_how_to_clear_and_where_loader_stats_are(pm, cli_env):
    """The local table names the active adapter, how to clear it, and that memory stats need --server."""
    invoke(pm, "load", "alpha")
    text = invoke(pm, "status").stdout

    assert (True, True, True) == ("alpha" in text, "adaptrix unload --all" in text, "--server" in text)


def test_unload_all_clears_the_session(pm, cli_env):
    """`unload --all` empties the active set; `unload` with neither a name nor --all is one error line."""
    invoke(pm, "load", "alpha")
    invoke(pm, "load", "beta")
    cleared = invoke(pm, "unload", "--all")
    neither = invoke(pm, "unload")

    assert ("Active: base model (no adapters)\n", 1, "Error: give either one adapter NAME or --all.\n") == (
        cleared.stdout, neither.exit_code, neither.stderr
    )


def test_query_names_the_adapters_before_the_answer(pm, cli_env):
    """Every answer starts (on stderr) with the adapters in use; a session's set says how to clear it."""
    invoke(pm, "load", "alpha")
    from_session = invoke(pm, "query", PROMPT, "-n", "2").stderr
    explicit = invoke(pm, "query", PROMPT, "-n", "2", "-a", "beta:0.5").stderr
    base = invoke(pm, "query", PROMPT, "-n", "2", "--no-adapter").stderr

    assert [
        "[adapters: alpha, the session's active set; `adaptrix unload --all` clears it, --no-adapter skips it once]\n",
        "[adapters: beta:0.5]\n",
        "[no adapters: the base model answers]\n",
    ] == [from_session, explicit, base]


def test_chat_start_line_names_the_session_set(pm, cli_env):
    """`chat` opens by naming the session's active set and how to clear it."""
    invoke(pm, "load", "alpha")
    result = invoke(pm, "chat", "-n", "2", input="/quit\n")

    assert (0, True) == (result.exit_code, "using alpha (the session's active set; `adaptrix unload --all` clears it)"
                         in result.stderr)


def test_query_repetition_penalty_reaches_the_engine(pm, cli_env, reference):
    """`--repetition-penalty 1.5` answers exactly what the engine answers with that penalty."""
    result = invoke(pm, "query", PROMPT, "-a", "alpha", "-n", "8", "--repetition-penalty", "1.5")

    assert (0, reference.query(PROMPT, "alpha", max_new_tokens=8, repetition_penalty=1.5) + "\n") == (
        result.exit_code, result.stdout
    )


def test_a_bad_repetition_penalty_is_one_error_line(pm, cli_env):
    """A penalty of 0 is refused before any generation, naming the option's rule."""
    result = invoke(pm, "query", PROMPT, "-n", "2", "--repetition-penalty", "0")

    assert (1, "Error: repetition_penalty must be > 0 (1.0 = off), got 0.0.\n") == (result.exit_code, result.stderr)


def test_query_threads_option_sets_torch_threads(pm, cli_env):
    """`--threads 2` is applied before the model runs; the default is one thread."""
    import torch

    invoke(pm, "query", PROMPT, "-n", "1", "--threads", "2")
    chosen = torch.get_num_threads()
    invoke(pm, "query", PROMPT, "-n", "1")

    assert (min(2, chosen), 1) == (chosen, torch.get_num_threads())


def test_query_prints_no_warning(cli_env):
    """A plain `adaptrix query` (its own process) writes the answer and the adapter line, and no warning."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("adaptrix")), "query", PROMPT, "-n", "3", "--no-adapter"],
        env={**cli_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )

    assert (0, "[no adapters: the base model answers]\n") == (result.returncode, result.stderr)


def test_help_reads_like_a_cli(pm):
    """Help shows TEXT / INTEGER and bare flags, not typer's `<bool>`, `<list[str]>` or `{text}`."""
    runner = CliRunner()
    app = make_app(pm)
    texts = [runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).stdout
             for cmd in (["query"], ["chat"], ["unload"], ["train"], [])]
    odd = [marker for text in texts for marker in ("<bool>", "<list[str]>", "<str>", "<int", "{text}") if marker in text]

    assert ([], True) == (odd, "Usage: adaptrix query [OPTIONS] TEXT" in texts[0])


def test_unload_of_an_inactive_adapter_is_one_error_line(pm, cli_env):
    """Unloading an adapter that is not active exits 1 with one line naming the active set."""
    result = invoke(pm, "unload", "alpha")

    assert (1, "Error: adapter 'alpha' is not active (active: base model (no adapters)).\n") == (
        result.exit_code, result.stderr
    )


def test_load_of_an_unknown_adapter_lists_the_library(pm, cli_env):
    """Loading a name the library lacks fails and lists what it has; the session is unchanged."""
    result = invoke(pm, "load", "nope")

    assert (1, True, "base model (no adapters)\n") == (
        result.exit_code, "Known: alpha, beta, delta, gamma" in result.stderr, invoke(pm, "active").stdout
    )


def test_switch_to_an_unknown_adapter_keeps_the_session(pm, cli_env):
    """`switch alpha nope` fails before touching the state file."""
    invoke(pm, "load", "alpha")
    result = invoke(pm, "switch", "alpha", "nope")

    assert (1, "alpha\n") == (result.exit_code, invoke(pm, "active").stdout)


def test_corrupt_state_file_is_reported_and_reset(pm, cli_env):
    """A corrupt session file gives a warning, an empty session and exit 0, never a traceback."""
    from adaptrix_core.config import load_config

    state = load_config().state_dir / "session.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("{ not json")
    result = invoke(pm, "active")

    assert (0, "base model (no adapters)\n", True) == (result.exit_code, result.stdout, "corrupt" in result.stderr)


def test_conflicting_selection_options_are_refused(pm, cli_env):
    """--adapter with --no-adapter is a one-line error."""
    result = invoke(pm, "query", "hi", "-a", "alpha", "--no-adapter")

    assert (1, "Error: use only one of --adapter, --no-adapter and --route.\n") == (result.exit_code, result.stderr)


def test_every_engine_command_and_option_has_help(pm):
    """Each everyday command has a help text, and so does each of its options and arguments."""
    import typer

    group = typer.main.get_command(make_app(pm))
    missing = []
    for name in ("load", "unload", "switch", "active", "status", "query", "chat", "serve"):
        command = group.commands[name]
        if not command.help:
            missing.append(name)
        missing += [f"{name} {p.name}" for p in command.params if not getattr(p, "help", None) and p.name != "ctx"]

    assert [] == missing
