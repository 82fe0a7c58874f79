"""The CLI session file: persisted, atomic, and a corrupt file resets instead of crashing."""

from __future__ import annotations

import json

import pytest

from adaptrix_core.exceptions import StateError
from adaptrix_core.state import CorruptStateWarning, SessionState, StateStore


def test_fresh_session_is_the_base_model(tmp_path):
    """With no file yet, the active set is empty."""
    assert {} == dict(StateStore(tmp_path / "s.json").read().active)


def test_write_then_read_round_trips(tmp_path):
    """What one process writes, the next one reads back, in order."""
    StateStore(tmp_path / "s.json").write(SessionState({"pirate": 1.0, "json": 0.5}))

    assert [("pirate", 1.0), ("json", 0.5)] == list(StateStore(tmp_path / "s.json").read().active.items())


def test_default_path_is_in_the_state_dir(tmp_path, monkeypatch):
    """Without a path the file lives in config.state_dir (ADAPTRIX_HOME/state in tests)."""
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))

    assert tmp_path / "state" / "session.json" == StateStore().path


def test_write_leaves_no_temp_files(tmp_path):
    """An atomic write leaves exactly the state file behind."""
    store = StateStore(tmp_path / "d" / "s.json")
    store.write(SessionState({"a": 1.0}))
    store.write(SessionState({"b": 1.0}))

    assert ["s.json"] == sorted(p.name for p in (tmp_path / "d").iterdir())


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"version": 99, "active": {}}).encode(),
        json.dumps({"version": 1, "active": ["a"]}).encode(),
        json.dumps({"version": 1, "active": {"a": "heavy"}}).encode(),
        json.dumps({"version": 1, "active": {"a": True}}).encode(),
        json.dumps({"version": 1, "active": {}, "updated": 3}).encode(),
    ],
)
def test_corrupt_file_is_reported_moved_aside_and_reset(tmp_path, content):
    """Each kind of corruption gives one message, an empty session, and the bad file kept as .corrupt."""
    path = tmp_path / "s.json"
    path.write_bytes(content)
    messages = []
    state = StateStore(path, on_corrupt=messages.append).read()

    assert ({}, 1, False, content) == (
        dict(state.active), len(messages), path.exists(), (tmp_path / "s.json.corrupt").read_bytes()
    )
    assert "corrupt" in messages[0]


def test_corrupt_file_warns_by_default(tmp_path):
    """Without a callback, corruption is a CorruptStateWarning, not an exception."""
    path = tmp_path / "s.json"
    path.write_text("garbage")
    with pytest.warns(CorruptStateWarning, match="session reset"):
        state = StateStore(path).read()

    assert {} == dict(state.active)


def test_update_applies_a_change(tmp_path):
    """update() reads, changes and writes the active set in one call."""
    store = StateStore(tmp_path / "s.json")
    store.update(lambda active: {**active, "a": 1.0})
    store.update(lambda active: {**active, "b": 0.5})

    assert {"a": 1.0, "b": 0.5} == dict(store.read().active)


def test_unwritable_dir_is_a_state_error(tmp_path):
    """A state dir that cannot be created is a StateError naming the path and the fix."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="ADAPTRIX_STATE_DIR"):
        StateStore(blocker / "sub" / "s.json").write(SessionState({"a": 1.0}))
