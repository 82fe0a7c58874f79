"""
Library and conversion safety: names, numbers, PEFT's target_modules rules, non-finite effects, broken entries,
integrity on load, concurrent writers, crash debris, file modes.
"""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
import torch

from adaptrix_core.conversion import convert
from adaptrix_core.exceptions import AdapterError, AdapterExistsError, AdapterFormatError, InvalidNameError
from adaptrix_core.library import METADATA_NAME, Library, default_shipped_dir
from adaptrix_core.peft_format import read_adapter, write_adapter
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.runtime import attach
from adaptrix_core.testing import tiny_llama


IDS = torch.tensor([[1, 5, 9, 2, 7, 3]])


def _adapter(path, *, config=None, layers=(0, 1), roles=("q_proj", "v_proj"), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"q_proj": 32, "v_proj": 16}
    modules = {f"model.layers.{i}.self_attn.{r}": (torch.randn(4, 32, generator=g), torch.randn(out[r], 4, generator=g) * scale)
               for i in layers for r in roles}
    return write_adapter(path, {"r": 4, "lora_alpha": 8, "target_modules": list(roles), **(config or {})}, modules)


@pytest.fixture(scope="module")
def pm():
    return make_plugin_manager()


@pytest.fixture(name="lib")
def _lib(tmp_path):
    return Library(tmp_path / "library", shipped_dir=tmp_path / "none")


def _convert(src, name, lib, pm, **kw):
    return convert(str(src), name, model=tiny_llama(), library=lib, pm=pm, **kw)


# names and numbers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base\n", "pirate\n", "x\r", "a\x00", "a\u2028"])
def test_names_with_a_trailing_newline_or_control_character_are_refused(lib, tmp_path, name):
    """
    `$` in the name rule used to match before a trailing newline: 'base\\n' was accepted and listed as 'base'.
    """
    with pytest.raises(InvalidNameError) as error:
        lib.install(name, _adapter(tmp_path / "src"))

    assert (repr(name) in str(error.value), "\n" in str(error.value)) == (True, False)


@pytest.mark.parametrize(("field", "raw"), [("r", "NaN"), ("r", "Infinity"), ("r", "1e400"), ("r", "1" + "0" * 400),
                                            ("lora_alpha", "1" + "0" * 400), ("rank_pattern", '{"q_proj": NaN}'),
                                            ("rank_pattern", '{"q_proj": 1e400}'), ("extra", "9" * 5000)])
def test_non_finite_huge_and_overlong_numbers_are_one_short_line(tmp_path, field, raw):
    """
    NaN, Infinity, 1e400 and integers of hundreds or thousands of digits: an AdapterFormatError, not a traceback
    from int() or json, and the message stays one line of reasonable length.
    """
    src = _adapter(tmp_path / "src")
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg[field] = "@@"
    (src / "adapter_config.json").write_text(json.dumps(cfg).replace('"@@"', raw))
    with pytest.raises(AdapterFormatError) as error:
        read_adapter(src)

    message = str(error.value)
    assert ("adapter_config.json" in message, "\n" in message, len(message) < 300) == (True, False, True), message


@pytest.mark.parametrize("kind", ["directory", "dangling link", "fifo", "device"])
def test_weights_that_are_not_a_regular_file_are_named_for_what_they_are(tmp_path, kind):
    """
    A directory, dangling symlink, FIFO or device where the weights belong is named as such (not 'missing').
    """
    src = _adapter(tmp_path / "src")
    weights = src / "adapter_model.safetensors"
    weights.unlink()
    {"directory": weights.mkdir, "dangling link": lambda: weights.symlink_to(tmp_path / "nowhere"),
     "fifo": lambda: os.mkfifo(weights), "device": lambda: weights.symlink_to("/dev/zero")}[kind]()
    with pytest.raises(AdapterFormatError) as error:
        read_adapter(src)

    expected = {"directory": "a directory", "dangling link": "dangling", "fifo": "FIFO", "device": "character device"}
    assert (True, False) == (expected[kind] in str(error.value), "missing" in str(error.value)), str(error.value)


# PEFT's target_modules -----------------------------------------------------------------------------------------------


def _peft_logits(src):
    from peft import PeftModel

    torch.manual_seed(0)
    model = PeftModel.from_pretrained(tiny_llama(), str(src)).eval()
    with torch.inference_mode():
        return model(IDS).logits


def _our_logits(path):
    am = attach(tiny_llama())
    am.load_adapter("a", path)
    with torch.inference_mode(), am.using("a"):
        return am.model(IDS).logits


@pytest.mark.parametrize(("label", "config", "kept"), [
    ("list", {"target_modules": ["q_proj"]}, 2),
    ("regex", {"target_modules": r".*\.0\.self_attn\.(q|v)_proj"}, 2),
    ("layers", {"layers_to_transform": [1]}, 2),
    ("exclude", {"exclude_modules": ["v_proj"]}, 2),
    ("exact-name", {"target_modules": ["model.layers.1.self_attn.v_proj"]}, 1),
])
def test_only_what_target_modules_selects_is_applied_as_in_peft(pm, lib, tmp_path, label, config, kept):
    """
    Saved q and v tensors with a config selecting fewer: Adaptrix applies exactly what PEFT applies (same
    logits as PeftModel), reports the ignored modules, and the stored adapter holds only the selected ones.
    """
    src = _adapter(tmp_path / "src", config=config)
    result = _convert(src, "t", lib, pm)
    ignored = result.report["ignored_modules"]
    ours = _our_logits(lib.path("t"))

    assert (kept, 4 - kept, True) == (len(result.report["modules"]), len(ignored), any("ignored" in w for w in result.report["warnings"]))
    torch.testing.assert_close(ours, _peft_logits(src), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("config", "phrase"), [
    ({"target_modules": []}, "targets no module"),
    ({"target_modules": ""}, "targets no module"),
    ({"target_modules": ["k_proj"]}, "select none"),
    ({"layers_to_transform": [7]}, "select none"),
    ({"layers_pattern": "layers"}, "without 'layers_to_transform'"),
    ({"target_modules": ".*q_proj", "layers_to_transform": [0]}, "regular expression"),
])
def test_target_modules_that_peft_refuses_are_refused(tmp_path, config, phrase):
    """
    Empty target_modules, targets matching no saved module, and field combinations PEFT's LoraConfig rejects.
    """
    with pytest.raises(AdapterFormatError, match=phrase):
        read_adapter(_adapter(tmp_path / "src", config=config))


# effects that are not finite -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "scale"), [({"lora_alpha": 1e308}, 1.0), ({}, 1e37), ({"lora_alpha": 1e39}, 1.0)])
def test_adapters_whose_effect_is_not_finite_are_refused(pm, lib, tmp_path, config, scale):
    """
    Finite but huge values (lora_alpha 1e308, lora_B entries near 1e37) used to be installed, recording a NaN effect.
    """
    with pytest.raises(AdapterFormatError, match="Refused"):
        _convert(_adapter(tmp_path / "src", config=config, scale=scale), "huge", lib, pm)

    assert (not lib.root.exists() or [] == list(lib.root.iterdir())) is True


# broken entries, integrity, modes ------------------------------------------------------------------------------------


def test_a_corrupt_entry_is_listed_as_broken_and_remove_works(lib, tmp_path):
    """
    A corrupt adaptrix.json no longer makes the adapter vanish: it is listed as broken with the reason, `get`
    says so, a plain install names it, and `remove` deletes it.
    """
    lib.install("x", _adapter(tmp_path / "src"))
    (lib.root / "x" / METADATA_NAME).write_text("{oops")
    broken = [(b.name, b.reason.split(" (")[0]) for b in lib.broken()]
    with pytest.raises(AdapterFormatError, match="broken"):
        lib.get("x")
    with pytest.raises(AdapterExistsError, match="broken"):
        lib.install("x", _adapter(tmp_path / "src2"))
    lib.remove("x")

    assert ([("x", "adaptrix.json is unreadable or not valid JSON")], [], []) == (broken, lib.broken(), lib.names())


def test_a_changed_weights_file_is_refused_on_load(lib, tmp_path):
    """
    A bit flip after install (same size, new mtime) is caught by the sha256 check before the weights are used.
    """
    lib.install("x", _adapter(tmp_path / "src"))
    lib.path("x")  # verified once: later checks hash again only when size, mtime, ctime or inode change
    weights = lib.root / "x" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(AdapterFormatError, match="changed since adapter 'x' was installed"):
        lib.path("x")


def test_shipped_adapters_match_their_recorded_sha256():
    """
    Every shipped adapter passes the load-time integrity check (retraining one must update its adaptrix.json).
    """
    shipped = Library(default_shipped_dir() / ".no-user-library", shipped_dir=default_shipped_dir())
    names = [info.name for info in shipped.list()]
    for name in names:
        shipped.verify(name)

    assert ([], True) == (shipped.broken(), len(names) >= 1)


def test_installed_directories_have_normal_modes(lib, tmp_path):
    """
    Installed adapter directories get the umask's mode like any directory (mkdtemp used to leave them 0700).
    """
    info = lib.install("x", _adapter(tmp_path / "src"))
    (tmp_path / "plain").mkdir()

    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == stat.S_IMODE(info.path.stat().st_mode)


def test_a_library_path_that_is_a_file_is_refused_before_any_work(tmp_path, pm):
    """
    A library directory that is a file is a clean error from the name check, before the conversion runs.
    """
    (tmp_path / "library").write_text("not a directory")
    lib = Library(tmp_path / "library", shipped_dir=tmp_path / "none")
    with pytest.raises(AdapterError, match="is a file"):
        lib.check_installable("x")


# concurrency and debris ----------------------------------------------------------------------------------------------


def test_two_writers_of_one_name_one_wins_the_other_gets_a_clean_error(pm, lib, tmp_path):
    """
    While one writer holds a name (a conversion in progress), a second conversion of it is refused at once.
    """
    src = _adapter(tmp_path / "src")
    held, release, errors = threading.Event(), threading.Event(), []

    def first():
        with lib.reserve("x"):
            held.set()
            release.wait(60)
            lib.install("x", src)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(60)
    try:
        _convert(src, "x", lib, pm, overwrite=True)
    except AdapterExistsError as e:
        errors.append(str(e))
    release.set()
    thread.join(60)

    assert (["x"], 1, True) == (lib.names(), len(errors), "being written by" in errors[0])


def test_debris_is_cleaned_on_open_but_never_under_a_live_writer(lib, tmp_path):
    """
    Leftovers of a crashed install (temp dirs, a stale lock) go on the next open; a name being written keeps its own.
    """
    from adaptrix_core.library_fs import name_lock

    lib.install("x", _adapter(tmp_path / "src"))
    lib.root.joinpath(".install-x-0a1b2c3d").mkdir()
    lib.root.joinpath(".convert-y-0a1b2c3d").mkdir()
    lib.root.joinpath(".lock-y").write_text("12345")
    lib.root.joinpath(".install-z-0a1b2c3d").mkdir()
    with name_lock(lib.root, "z"):
        reopened = Library(lib.root, shipped_dir=tmp_path / "none")
        left = sorted(p.name for p in lib.root.iterdir() if p.name.startswith("."))

    assert ([".install-z-0a1b2c3d", ".lock-z"], ["x"]) == (left, reopened.names())


def test_a_writer_in_another_process_is_named_by_its_pid(lib, tmp_path):
    """
    The lock is an flock, so it holds across processes: a forked child holding the name makes an install in
    this process fail at once, naming the child's pid; once the child exits, the install goes through.
    """
    from adaptrix_core.library_fs import name_lock

    src = _adapter(tmp_path / "src")
    lib.root.mkdir(parents=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with name_lock(lib.root, "x"):
                os.write(ready_w, b"1")
                os.read(go_r, 1)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    try:
        with pytest.raises(AdapterExistsError) as error:
            lib.install("x", src)
    finally:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)
    lib.install("x", src)

    assert (True, ["x"]) == (f"process {pid}" in str(error.value), lib.names())
