"""
Every code block in README.md and docs/**/*.md runs as written (a small Sybil-style collector).

- ``python`` blocks of one file run in order in one namespace, from an empty temporary
  directory (so a snippet that only works from the repository root fails here).
- ``bash`` / ``console`` blocks: every ``adaptrix ...`` command in them must parse against the
  real CLI (command, options, arguments), without running it.
- An HTML comment on the line before a block steers it: ``<!-- doctest: slow -->`` (loads the
  real embedded model: the test is marked ``slow``), ``<!-- doctest: expect TEXT -->`` (what the
  block prints must contain TEXT), ``<!-- doctest: skip REASON -->`` (never silently: the reason
  is the test's skip message). ``<!-- doctest-setup: ... -->`` holds hidden code that runs first.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex

from pathlib import Path

import attrs
import pytest


ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->\s*$")
_SETUP = re.compile(r"<!--\s*doctest-setup:\s*\n(.*?)\n\s*-->", re.S)


@attrs.frozen
class Block:
    path: Path
    line: int
    lang: str
    code: str
    directives: tuple[str, ...] = ()
    setup: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def directive(self, name: str) -> str | None:
        for d in self.directives:
            if d == name or d.startswith(name + " "):
                return d[len(name):].strip()
        return None


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of *path*, each with the directives and hidden setup code just above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        directives: list[str] = []
        above = start - 1
        while above >= 0 and _DIRECTIVE.match(lines[above]):
            directives += [d.strip() for d in _DIRECTIVE.match(lines[above]).group(1).split(";")]
            above -= 1
        head = "\n".join(lines[max(0, above - 40) : above + 1])
        setups = _SETUP.findall(head)
        setup = setups[-1] if setups and head.rstrip().endswith("-->") else ""
        found.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n", tuple(directives), setup))
        i = end + 1
    return found


ALL_BLOCKS = [b for path in DOCS for b in blocks_of(path)]


def _python_files() -> list[object]:
    params = []
    for path in DOCS:
        blocks = [b for b in ALL_BLOCKS if b.path == path and b.lang == "python"]
        if blocks:
            slow = any(b.directive("slow") is not None for b in blocks)
            params.append(pytest.param(path, marks=[pytest.mark.slow] if slow else [], id=str(path.relative_to(ROOT))))
    return params


@pytest.mark.parametrize("path", _python_files())
def test_python_blocks_run(path, tmp_path, monkeypatch, request):
    """The file's python blocks run in order, from an empty directory, and print what they promise."""
    blocks = [b for b in ALL_BLOCKS if b.path == path and b.lang == "python"]
    if any(b.directive("slow") is not None for b in blocks):
        cache = request.getfixturevalue("embedded_cache_dir")
        monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(cache))
        monkeypatch.setenv("ADAPTRIX_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    outcomes = []
    for block in blocks:
        reason = block.directive("skip")
        if reason is not None:
            outcomes.append((block.where, f"skipped: {reason}"))
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if block.setup:
                exec(compile(block.setup, f"{block.where} (setup)", "exec"), namespace)
            exec(compile(block.code, block.where, "exec"), namespace)
        expected = block.directive("expect")
        ok = expected is None or expected.lower() in out.getvalue().lower()
        outcomes.append((block.where, "ok" if ok else f"printed {out.getvalue()[:300]!r}, expected {expected!r}"))
    assert [o for o in outcomes if o[1] != "ok" and not o[1].startswith("skipped")] == []
    if all(o[1].startswith("skipped") for o in outcomes):
        pytest.skip("; ".join(f"{where} {why}" for where, why in outcomes))


def _commands(block: Block) -> list[list[str]]:
    """Every ``adaptrix`` invocation in a shell block, as argv (comments and ``&&`` chains handled)."""
    commands = []
    for raw in block.code.splitlines():
        line = raw.strip().removeprefix("$ ")
        for part in re.split(r"\s&&\s|\s;\s|\s\|\s", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            words = [w for w in words if "=" not in w or w.startswith("-")] if words and "=" in words[0] else words
            if words and Path(words[0]).name == "adaptrix":
                commands.append(words[1:])
    return commands


def _parse(command, name, argv, parent):
    """Parse *argv* the way click would before invoking, descending into sub-commands."""
    from typer._click.core import Context
    from typer._click.exceptions import UsageError

    if not hasattr(command, "get_command"):  # a command, not a group
        command.make_context(name, list(argv), parent=parent).close()
        return
    context = Context(command, info_name=name, parent=parent)
    if not argv or argv[0].startswith("-"):
        command.make_context(name, list(argv), parent=parent).close()
        return
    sub = command.get_command(context, argv[0])
    if sub is None:
        raise UsageError(f"no such command {argv[0]!r}", context)
    _parse(sub, argv[0], argv[1:], context)


SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("bash", "console", "sh", "shell") and _commands(b)]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.where for b in SHELL_BLOCKS])
def test_shell_commands_parse(block, pm):
    """Each `adaptrix ...` line names a real command with options and arguments it accepts."""
    import typer

    from typer._click.exceptions import ClickException  # typer 0.29 vendors click: not click's classes
    from typer.exceptions import Exit

    from adaptrix_core.cli import make_app

    group = typer.main.get_command(make_app(pm))
    problems = []
    for argv in _commands(block):
        if block.directive("skip") is not None:
            continue
        try:
            _parse(group, "adaptrix", argv, None)
        except Exit:
            pass  # --help
        except ClickException as e:
            problems.append(f"adaptrix {shlex.join(argv)}: {e.format_message()}")
    assert problems == []


def test_a_wrong_command_in_a_doc_would_fail(pm, tmp_path):
    """The shell check is not vacuous: an unknown option or command is reported, with the line."""
    import typer

    from typer._click.exceptions import ClickException

    from adaptrix_core.cli import make_app

    doc = tmp_path / "bad.md"
    doc.write_text("```bash\nadaptrix query hi --no-such-option\nadaptrix no-such-command\nadaptrix query hi -a pirate\n```\n")
    group = typer.main.get_command(make_app(pm))
    outcomes = []
    for argv in _commands(blocks_of(doc)[0]):
        try:
            _parse(group, "adaptrix", argv, None)
            outcomes.append("ok")
        except ClickException:
            outcomes.append("refused")

    assert ["refused", "refused", "ok"] == outcomes


def test_the_collector_sees_every_document():
    """The README and every docs page are collected, and the README has runnable python blocks."""
    readme_python = [b for b in ALL_BLOCKS if b.path.name == "README.md" and b.path.parent == ROOT and b.lang == "python"]
    assert (True, True) == (len(DOCS) > 5, len(readme_python) >= 2)
