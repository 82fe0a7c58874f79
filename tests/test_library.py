"""The adapter library: atomic installs, metadata, listing, shipped adapters, remove and export."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil

from pathlib import Path

import pytest
import torch

import adaptrix_core

from adaptrix_core.exceptions import (
    AdapterError,
    AdapterExistsError,
    AdapterFormatError,
    AdapterNotFoundError,
    InvalidNameError,
)
from adaptrix_core.library import METADATA_NAME, Library, default_shipped_dir
from adaptrix_core.peft_format import write_adapter


def _peft_dir(path: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    return write_adapter(
        path,
        {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]},
        {"model.layers.0.self_attn.q_proj": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g))},
    )


def _shipped(root: Path, name: str, **meta) -> Path:
    d = _peft_dir(root / name)
    (d / METADATA_NAME).write_text(json.dumps({"name": name, **meta}))
    return d


@pytest.fixture(name="lib")
def _lib(tmp_path):
    """An empty library with an empty shipped folder."""
    (tmp_path / "shipped").mkdir()
    return Library(tmp_path / "library", shipped_dir=tmp_path / "shipped")


def test_install_writes_peft_files_and_metadata(lib, tmp_path):
    """
    An install holds adapter_config.json, the weights and adaptrix.json with every documented field.
    """
    src = _peft_dir(tmp_path / "src")
    info = lib.install(
        "json", src, description="Answers in JSON.", capabilities=["json", "structured-output"],
        domain="structured-output", examples=["List three fruits"], source="./src", base_model="gpt2",
        report={"rank": 2}, lineage={"merged": ["a", "b"]}, extra={"note": 1},
    )
    meta = lib.metadata("json")
    created = datetime.datetime.fromisoformat(meta.pop("created"))

    assert ["adapter_config.json", "adapter_model.safetensors", "adaptrix.json"] == sorted(p.name for p in info.path.iterdir())
    assert {
        "name": "json", "description": "Answers in JSON.", "capabilities": ["json", "structured-output"],
        "domain": "structured-output", "examples": ["List three fruits"], "source": "./src", "base_model": "gpt2",
        "sha256": hashlib.sha256((src / "adapter_model.safetensors").read_bytes()).hexdigest(),
        "report": {"rank": 2}, "lineage": {"merged": ["a", "b"]}, "extra": {"note": 1},
    } == meta
    assert datetime.timedelta(0) == created.utcoffset()


def test_get_returns_the_adapter_info(lib, tmp_path):
    """
    get() gives the AdapterInfo routers use: tags, examples, base model and the PEFT dir.
    """
    lib.install("pirate", _peft_dir(tmp_path / "src"), capabilities=("pirate",), domain="style", examples=("hi",))

    assert adaptrix_core.AdapterInfo(
        name="pirate", capabilities=("pirate",), domain="style", examples=("hi",), path=lib.root / "pirate"
    ) == lib.get("pirate")


def test_list_is_sorted_and_includes_shipped_adapters(lib, tmp_path):
    """
    User and shipped adapters are listed together, sorted by name; shipped ones are marked.
    """
    _shipped(lib.shipped_dir, "json", domain="structured-output")
    lib.install("zeta", _peft_dir(tmp_path / "z"))
    lib.install("alpha", _peft_dir(tmp_path / "a"))

    assert [("alpha", False), ("json", True), ("zeta", False)] == [(i.name, i.shipped) for i in lib.list()]


def test_listing_skips_half_installed_and_incomplete_directories(lib, tmp_path):
    """
    Dot-prefixed temp dirs, dirs without adaptrix.json, weights or config, and corrupt metadata are not listed.
    """
    lib.install("good", _peft_dir(tmp_path / "src"))
    shutil.copytree(lib.path("good"), lib.root / ".install-x-123")
    shutil.copytree(lib.path("good"), lib.root / "no-meta")
    (lib.root / "no-meta" / METADATA_NAME).unlink()
    shutil.copytree(lib.path("good"), lib.root / "no-weights")
    (lib.root / "no-weights" / "adapter_model.safetensors").unlink()
    shutil.copytree(lib.path("good"), lib.root / "no-config")
    (lib.root / "no-config" / "adapter_config.json").unlink()
    shutil.copytree(lib.path("good"), lib.root / "bad-meta")
    (lib.root / "bad-meta" / METADATA_NAME).write_text("{not json")
    (lib.root / "stray-file").write_text("x")

    assert (["good"], {
        "bad-meta": "adaptrix.json is unreadable or not valid JSON",
        "no-config": "adapter_config.json is missing",
        "no-meta": "adaptrix.json is missing",
        "no-weights": "adapter_model.safetensors is missing",
        "stray-file": "not a directory (a regular file)",
    }) == (lib.names(), {b.name: b.reason.split(" (Expecting")[0] for b in lib.broken()})


def test_get_and_contains_agree_with_the_full_listing_for_every_kind_of_name(lib, tmp_path):
    """
    Looking one name up (without scanning the library) finds exactly what the listing finds: shipped names win,
    a broken shipped entry leaves the user's one visible, and hidden, broken, nested or traversing names
    are not adapters.
    """
    lib.install("good", _peft_dir(tmp_path / "src"))
    lib.install("also", _peft_dir(tmp_path / "src2", seed=1))
    shutil.copytree(lib.path("good"), lib.root / ".install-x-123")
    shutil.copytree(lib.path("good"), lib.root / "bad-meta")
    (lib.root / "bad-meta" / METADATA_NAME).write_text("{not json")
    (lib.root / "stray-file").write_text("x")
    _shipped(lib.shipped_dir, "shipped-one", description="from the repo")
    shutil.copytree(lib.path("also"), lib.root / "both")
    _shipped(lib.shipped_dir, "both", description="shipped copy")
    shutil.copytree(lib.path("also"), lib.root / "shipped-broken")
    _shipped(lib.shipped_dir, "shipped-broken")
    (lib.shipped_dir / "shipped-broken" / "adapter_config.json").unlink()
    (lib.shipped_dir / "README.md").write_text("not an adapter")
    listing = {info.name: info for info in lib.list()}
    names = [*listing, ".install-x-123", "bad-meta", "stray-file", "README.md", "missing", "", ".", "..",
             "../library/good", "good/", "sub/good", "good\0", str(lib.root / "good")]

    found = {}
    for name in names:
        try:
            found[name] = lib.get(name)
        except (AdapterNotFoundError, AdapterFormatError):
            found[name] = None
    membership = {name: name in lib for name in names}

    assert {n: i for n, i in found.items() if i is not None} == listing
    assert {n for n, inside in membership.items() if inside} == set(listing)
    assert ({"good", "also", "both", "shipped-one", "shipped-broken"}, True, False) == (
        set(listing), listing["both"].shipped, listing["shipped-broken"].shipped)


def test_get_reads_only_the_named_entry(lib, tmp_path, monkeypatch):
    """A lookup (every adapter load does several) costs the same with 1 or 40 adapters installed."""
    import adaptrix_core.library as library_module

    for i in range(40):
        lib.install(f"a{i:02d}", _peft_dir(tmp_path / f"src{i}", seed=i))
    read = []
    real = library_module._metadata_or_reason
    monkeypatch.setattr(library_module, "_metadata_or_reason", lambda d: read.append(d.name) or real(d))

    lib.get("a07")
    assert "a07" in lib
    lib.path("a07")

    assert set(read) == {"a07"}


def test_failed_install_leaves_nothing_behind(lib, tmp_path, monkeypatch):
    """
    An install that fails half-way (here: copying the weights) leaves the library exactly as it was.
    """
    lib.install("existing", _peft_dir(tmp_path / "a"))
    before = sorted(p.relative_to(lib.root) for p in lib.root.rglob("*"))
    real_copy = shutil.copyfile

    def failing_copy(src, dst, *args, **kwargs):
        if str(src).endswith(".safetensors"):
            raise OSError("disk full")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    with pytest.raises(AdapterError, match="disk full"):
        lib.install("new", _peft_dir(tmp_path / "b"))

    assert before == sorted(p.relative_to(lib.root) for p in lib.root.rglob("*"))


def test_duplicate_name_is_refused_unless_overwrite(lib, tmp_path):
    """
    Installing over an existing name raises AdapterExistsError; overwrite=True replaces it atomically.
    """
    lib.install("a", _peft_dir(tmp_path / "one", seed=1), description="first")
    with pytest.raises(AdapterExistsError, match="already in the library"):
        lib.install("a", _peft_dir(tmp_path / "two", seed=2), description="second")
    lib.install("a", tmp_path / "two", description="second", overwrite=True)

    assert ("second", ["a"], []) == (
        lib.get("a").description, lib.names(), [p.name for p in lib.root.iterdir() if p.name.startswith(".")]
    )


def test_shipped_name_cannot_be_taken_even_with_overwrite(lib, tmp_path):
    """
    User adapters never shadow shipped ones: their names are refused, with or without overwrite.
    """
    _shipped(lib.shipped_dir, "pirate")
    for overwrite in (False, True):
        with pytest.raises(AdapterExistsError, match="shipped adapter"):
            lib.install("pirate", _peft_dir(tmp_path / f"src{overwrite}"), overwrite=overwrite)

    assert not (lib.root / "pirate").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".hidden", "base", "a b"])
def test_invalid_names_are_refused(lib, tmp_path, name):
    """
    Names with separators, '..', leading dots, spaces or reserved words raise InvalidNameError.
    """
    with pytest.raises(InvalidNameError):
        lib.install(name, _peft_dir(tmp_path / "src"))

    assert not lib.root.exists() or [] == list(lib.root.iterdir())


def test_install_needs_config_and_weights(lib, tmp_path):
    """
    A source directory without the weights file is refused, naming the directory.
    """
    src = _peft_dir(tmp_path / "src")
    (src / "adapter_model.safetensors").unlink()

    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors"):
        lib.install("x", src)


def test_get_unknown_lists_known_names(lib, tmp_path):
    """
    Asking for an unknown adapter names the ones that exist.
    """
    lib.install("alpha", _peft_dir(tmp_path / "a"))

    with pytest.raises(AdapterNotFoundError, match="Known: alpha"):
        lib.get("beta")


def test_remove_deletes_user_adapters_only(lib, tmp_path):
    """
    remove() deletes a user adapter completely; shipped and unknown names are errors.
    """
    _shipped(lib.shipped_dir, "pirate")
    lib.install("mine", _peft_dir(tmp_path / "a"))
    lib.remove("mine")
    with pytest.raises(AdapterError, match="shipped"):
        lib.remove("pirate")
    with pytest.raises(AdapterNotFoundError):
        lib.remove("mine")

    assert (["pirate"], []) == (lib.names(), list(lib.root.iterdir()))


def test_export_writes_a_plain_peft_directory(lib, tmp_path):
    """
    export() copies config and weights (no adaptrix.json) to a new or empty directory, byte for byte.
    """
    src = _peft_dir(tmp_path / "src")
    lib.install("a", src)
    (tmp_path / "empty").mkdir()
    out1 = lib.export("a", tmp_path / "out" / "a")
    out2 = lib.export("a", tmp_path / "empty")

    assert (["adapter_config.json", "adapter_model.safetensors"], True, True) == (
        sorted(p.name for p in out1.iterdir()),
        (src / "adapter_model.safetensors").read_bytes() == (out1 / "adapter_model.safetensors").read_bytes(),
        (out1 / "adapter_config.json").read_bytes() == (out2 / "adapter_config.json").read_bytes(),
    )


def test_export_refuses_a_non_empty_destination(lib, tmp_path):
    """
    Exporting onto a directory with files in it is refused unless overwrite is given.
    """
    lib.install("a", _peft_dir(tmp_path / "src"))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("x")
    with pytest.raises(AdapterExistsError, match="not empty"):
        lib.export("a", tmp_path / "dest")
    lib.export("a", tmp_path / "dest", overwrite=True)

    assert ["adapter_config.json", "adapter_model.safetensors"] == sorted(p.name for p in (tmp_path / "dest").iterdir())


def test_update_metadata_rewrites_fields(lib, tmp_path):
    """
    update_metadata() changes fields of a user adapter and keeps the rest.
    """
    lib.install("a", _peft_dir(tmp_path / "src"), domain="x")
    lib.update_metadata("a", description="new", capabilities=["c"])

    assert ("new", ("c",), "x") == (lib.get("a").description, lib.get("a").capabilities, lib.get("a").domain)


def test_default_root_is_the_configured_library_dir(tmp_path, monkeypatch):
    """
    Without a root, the library lives in load_config().library_dir (ADAPTRIX_HOME/library in tests).
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path / "home"))

    assert tmp_path / "home" / "library" == Library().root


def test_default_shipped_dir_is_the_repository_adapters_folder(monkeypatch):
    """
    Shipped adapters come from the repository's adapters/ folder unless ADAPTRIX_SHIPPED_ADAPTERS says otherwise.
    """
    monkeypatch.delenv("ADAPTRIX_SHIPPED_ADAPTERS", raising=False)

    assert Path(adaptrix_core.__file__).resolve().parent.parent / "adapters" == default_shipped_dir()


def test_shipped_dir_env_override_and_disable(tmp_path, monkeypatch):
    """
    ADAPTRIX_SHIPPED_ADAPTERS points elsewhere; set to "" it disables shipped adapters.
    """
    _shipped(tmp_path / "elsewhere", "json")
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", str(tmp_path / "elsewhere"))
    found = Library(tmp_path / "lib").names()
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")

    assert (["json"], []) == (found, Library(tmp_path / "lib").names())


def test_lazy_import_from_package_root():
    """
    `from adaptrix_core import Library` works (lazy attribute).
    """
    assert Library is adaptrix_core.Library
