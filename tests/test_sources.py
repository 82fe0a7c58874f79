"""Adapter sources: which source claims a reference, local directories, and the hub through an offline cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptrix_core.builtins import sources
from adaptrix_core.builtins.sources import ADAPTER_FILES, FileSource, HubSource
from adaptrix_core.conversion import fetch, resolve_source
from adaptrix_core.exceptions import AdapterFormatError, AdapterNotFoundError, NotRegisteredError
from adaptrix_core.peft_format import write_adapter


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(cache: Path, repo: str, *, refs: dict[str, str] | None = None, files: bool = True) -> Path:
    """Lay out a Hugging Face hub cache entry by hand, exactly as huggingface_hub writes it."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    if files:
        write_adapter(
            snapshot, {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]},
            {"model.layers.0.self_attn.q_proj": (torch.ones(2, 8), torch.ones(8, 2))},
        )
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
    (storage / "refs").mkdir(parents=True)
    for ref, commit in (refs or {"main": COMMIT}).items():
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.mark.parametrize(
    ("ref", "scheme", "inner"),
    [
        ("./adapters/a", "file", "./adapters/a"),
        ("../a", "file", "../a"),
        ("/abs/dir", "file", "/abs/dir"),
        ("~/dir", "file", "~/dir"),
        ("file:///abs/dir", "file", "/abs/dir"),
        ("file://rel/dir", "file", "rel/dir"),
        ("user/repo", "hf", "user/repo"),
        ("user/repo@v1.0", "hf", "user/repo@v1.0"),
        ("hf://user/repo", "hf", "user/repo"),
        ("HF://user/repo@main", "hf", "user/repo@main"),
    ],
)
def test_reference_goes_to_the_right_source(core_pm, ref, scheme, inner):
    """
    Paths go to `file`, repo ids to `hf`, and an explicit scheme:// wins.
    """
    source, rest = resolve_source(ref, core_pm)

    assert (scheme, inner) == (source.scheme, rest)


def test_existing_directory_named_like_a_repo_is_a_path(core_pm, tmp_path, monkeypatch):
    """
    `user/repo` that exists on disk is the local directory, not a hub repo.
    """
    (tmp_path / "user" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert "file" == resolve_source("user/repo", core_pm)[0].scheme


def test_unknown_scheme_lists_the_registered_ones(core_pm):
    """
    An unknown scheme raises NotRegisteredError naming the schemes that exist.
    """
    with pytest.raises(NotRegisteredError, match="Registered: file, hf"):
        resolve_source("s3://bucket/x", core_pm)


def test_unclaimed_reference_is_a_clear_error(core_pm):
    """
    Something that is neither a path nor a repo id says which forms are accepted.
    """
    with pytest.raises(AdapterNotFoundError, match="user/repo"):
        resolve_source("just a phrase", core_pm)


def test_file_source_returns_the_directory_in_place(tmp_path):
    """
    The file source neither copies nor moves: it returns the directory itself.
    """
    assert tmp_path == FileSource().fetch(str(tmp_path))


def test_file_source_missing_and_file_paths(tmp_path):
    """
    A missing path and a file path are clean, different errors.
    """
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(AdapterNotFoundError, match="no such directory"):
        FileSource().fetch(str(tmp_path / "nope"))
    with pytest.raises(AdapterFormatError, match="not a directory"):
        FileSource().fetch(str(tmp_path / "f.json"))


@pytest.mark.parametrize("ref", ["user/lora", "user/lora@main", f"user/lora@{COMMIT}", "user/lora@v2"])
def test_hub_source_reads_the_offline_cache(tmp_path, monkeypatch, ref):
    """
    With HF_HUB_OFFLINE=1 a cached repo resolves to its snapshot, by branch, tag or commit.
    """
    snapshot = _hub_cache(tmp_path / "hub", "user/lora", refs={"main": COMMIT, "v2": COMMIT})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    assert snapshot == HubSource().fetch(ref)


def test_hub_source_through_the_plugin_manager(core_pm, tmp_path, monkeypatch):
    """
    fetch('hf://user/lora') goes through the registered hf source and HF's cache.
    """
    snapshot = _hub_cache(tmp_path / "hub", "user/lora")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    assert snapshot == fetch("hf://user/lora", core_pm)


def test_hub_offline_miss_says_downloads_are_off(tmp_path):
    """
    A repo that is not cached, in offline mode, is an AdapterNotFoundError that names HF_HUB_OFFLINE.
    """
    with pytest.raises(AdapterNotFoundError, match="HF_HUB_OFFLINE=1"):
        HubSource(cache_dir=tmp_path / "empty").fetch("nobody/nothing")


def test_hub_offline_unknown_revision(tmp_path):
    """
    A revision the cache does not know is an offline miss too.
    """
    _hub_cache(tmp_path / "hub", "user/lora")

    with pytest.raises(AdapterNotFoundError, match="hf://user/lora@v9"):
        HubSource(cache_dir=tmp_path / "hub").fetch("user/lora@v9")


def test_hub_repo_without_adapter_config_is_not_an_adapter(tmp_path):
    """
    A cached repo without adapter_config.json (a full model) is refused with a hint.
    """
    _hub_cache(tmp_path / "hub", "user/model", files=False)

    with pytest.raises(AdapterFormatError, match="full model"):
        HubSource(cache_dir=tmp_path / "hub").fetch("user/model")


def test_hub_downloads_only_adapter_files_and_honours_offline(tmp_path, monkeypatch):
    """
    snapshot_download is asked for the adapter files only, and for local files only when HF_HUB_OFFLINE is set.
    """
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["revision"], kwargs["allow_patterns"], kwargs["local_files_only"]))
        return str(_hub_cache(tmp_path / f"hub{len(calls)}", repo_id))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    HubSource().fetch("user/lora@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    HubSource().fetch("user/lora")

    assert [("user/lora", "v1", list(ADAPTER_FILES), True), ("user/lora", None, list(ADAPTER_FILES), False)] == calls


def test_sources_registered_by_the_builtin_plugin(core_pm):
    """
    The `file` and `hf` sources come from adaptrix_core.builtins.sources.
    """
    from adaptrix_core.registry import adapter_sources

    found = adapter_sources(core_pm)

    assert {"file": sources.__name__, "hf": sources.__name__} == {k: found[k].plugin for k in ("file", "hf")}
