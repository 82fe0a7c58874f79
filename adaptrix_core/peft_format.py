"""
Read and write PEFT LoRA adapters on disk: ``adapter_config.json`` + ``adapter_model.safetensors``.

This is the one place that knows PEFT's file layout, its key variants in the
wild (with or without ``base_model.model.``, doubled prefixes, adapter names
inside keys) and the features Adaptrix refuses rather than silently ignores.
Everything returned here is plain tensors keyed by module name; fitting them
to a model is :mod:`adaptrix_core.runtime`'s job.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .atomic import exchange, make_dir
from .exceptions import AdapterExistsError, AdapterFormatError, UnsupportedFeatureError
from .peft_targets import parse_targets, select, short


if TYPE_CHECKING:
    import torch


CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")

# Config fields that change what an adapter computes and that Adaptrix does not
# implement: refused by name instead of silently ignored. Value -> "is it set?".
_REFUSED_FIELDS: dict[str, str] = {
    "use_dora": "DoRA (use_dora=true)",
    "lora_bias": "LoRA bias terms (lora_bias=true)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "layer_replication": "layer replication (layer_replication)",
    "enable_lora": "pre-0.3 PEFT MergedLinear (enable_lora)",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "use_qalora": "QA-LoRA (use_qalora=true)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
}

# Key fragments of tensors that belong to refused features.
_REFUSED_KEYS: tuple[tuple[str, str], ...] = (
    ("lora_embedding_A", "LoRA on embedding layers"),
    ("lora_embedding_B", "LoRA on embedding layers"),
    ("lora_magnitude_vector", "DoRA (lora_magnitude_vector tensors)"),
    ("modules_to_save", "fully trained extra modules (modules_to_save tensors)"),
)


@attrs.frozen
class LoraConfig:
    """
    The fields of a PEFT ``LoraConfig`` that decide what a LoRA adapter computes.

    Old PEFT files miss some fields; the defaults are PEFT's. Unknown extra
    fields are kept in the raw dict, not here.
    """

    r: int
    lora_alpha: float = 8.0
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = attrs.field(factory=dict)
    alpha_pattern: Mapping[str, float] = attrs.field(factory=dict)
    fan_in_fan_out: bool = False
    target_modules: tuple[str, ...] | str | None = None
    exclude_modules: tuple[str, ...] | str | None = None
    layers_to_transform: tuple[int, ...] | None = None
    layers_pattern: tuple[str, ...] | None = None
    bias: str = "none"
    base_model_name_or_path: str | None = None
    task_type: str | None = None

    def rank_alpha_for(self, module_name: str) -> tuple[int, float]:
        """The ``(r, lora_alpha)`` PEFT gives *module_name*, after ``rank_pattern`` / ``alpha_pattern``."""
        r = self.rank_pattern[key] if (key := _pattern_key(self.rank_pattern, module_name)) else self.r
        alpha = self.alpha_pattern[key] if (key := _pattern_key(self.alpha_pattern, module_name)) else self.lora_alpha
        return int(r), float(alpha)

    def scaling_for(self, module_name: str, r: int | None = None) -> float:
        """PEFT's ``scaling``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        pattern_r, alpha = self.rank_alpha_for(module_name)
        r = r or pattern_r
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_key(patterns: Mapping[str, Any], module_name: str) -> str | None:
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of *module_name*."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


@attrs.frozen
class LoraTensors:
    """One module's LoRA pair: ``A`` is ``(r, in_features)``, ``B`` is ``(out_features, r)``."""

    A: torch.Tensor
    B: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@attrs.frozen
class ParsedAdapter:
    """
    An adapter read from disk, validated as PEFT LoRA but not yet fitted to a model.

    Attributes:
        path: The directory it was read from.
        config: The fields that matter for computation.
        raw_config: ``adapter_config.json`` as parsed.
        modules: Module name (PEFT prefixes and adapter names stripped) -> tensors.
        unknown_keys: Tensor keys that are neither LoRA A/B nor a refused feature.
        weights_file: The weights file that was read.
        ignored: ``(module, why)`` for saved modules the config does not target (PEFT never loads them).
    """

    path: Path
    config: LoraConfig
    raw_config: Mapping[str, Any]
    modules: Mapping[str, LoraTensors]
    unknown_keys: tuple[str, ...] = ()
    weights_file: Path | None = None
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def tensor_bytes(self) -> int:
        return sum(t.A.numel() * t.A.element_size() + t.B.numel() * t.B.element_size() for t in self.modules.values())


def _field_error(path: Path, field: str, problem: str) -> AdapterFormatError:
    return AdapterFormatError(f"{path}: field {field!r} {problem}")


MAX_RANK = 1 << 20
"""No real LoRA rank comes near this; a larger ``r`` is a corrupt or hostile config."""


def _as_int(path: Path, field: str, value: Any) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or value <= 0:
        raise _field_error(path, field, f"must be a positive integer, got {short(value)}")
    if value > MAX_RANK:
        raise _field_error(path, field, f"is {short(value)}, larger than any LoRA rank ({MAX_RANK:,} at most)")
    return int(value)


def _as_number(path: Path, field: str, value: Any) -> float:
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise _field_error(path, field, f"must be a finite number, got {short(value)}")
    return number


def _as_pattern(path: Path, field: str, value: Any, convert: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _field_error(path, field, f"must be an object of pattern -> value, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        try:
            re.compile(key)
        except (re.error, RecursionError, OverflowError) as e:
            raise _field_error(path, field, f"has an invalid regular expression {short(key)} ({short(str(e), 80)})") from None
        out[key] = convert(path, f"{field}[{short(key)}]", item)
    return out


def _as_str_tuple(path: Path, field: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _field_error(path, field, f"must be a string or a list of strings, got {short(value)}")


def read_lora_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> LoraConfig:
    """
    Parse and validate a PEFT LoRA config from an adapter directory, a JSON file or a dict.

    Raises:
        AdapterFormatError: Missing or invalid JSON, a field of the wrong type, a non-LoRA ``peft_type``.
        UnsupportedFeatureError: A feature Adaptrix refuses (DoRA, ``lora_bias``, ``modules_to_save``, ...).
    """
    if isinstance(source, Mapping):
        path, raw = Path("<adapter_config>"), dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            path = path / CONFIG_NAME
        raw = _read_json(path)
    return _parse_config(path, raw)


MAX_CONFIG_BYTES = 16 << 20
"""An adapter config is a few KiB; a bigger file is refused before it is parsed."""


def not_a_regular_file(path: Path) -> str | None:
    """Why *path* cannot be read as a file (a directory, a FIFO, a dangling link, ...), or ``None`` if it can."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return "a dangling symbolic link"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((f"{what}, not a regular file" for test, what in kinds if test(mode)), "not a regular file")


def _read_json(path: Path) -> dict[str, Any]:
    problem = not_a_regular_file(path)
    if problem == "missing":
        raise AdapterFormatError(
            f"{path}: missing. A PEFT adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}."
        )
    if problem is not None:
        raise AdapterFormatError(f"{path}: is {problem}; expected the JSON file of a PEFT adapter config.")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise AdapterFormatError(
                f"{path}: {path.stat().st_size:,} bytes, too large for an adapter config ({MAX_CONFIG_BYTES:,} at most)."
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({short(str(e), 120)[1:-1]}).") from None
    except ValueError as e:  # json's limit on integer digits, and other conversion failures
        why = "an integer with too many digits" if "digits" in str(e) else short(str(e), 120)[1:-1]
        raise AdapterFormatError(f"{path}: not valid JSON ({why}).") from None
    except RecursionError:
        raise AdapterFormatError(f"{path}: not valid JSON (nested too deeply to parse).") from None
    except OSError as e:
        raise AdapterFormatError(f"{path}: unreadable ({e.strerror or e}).") from None
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{path}: must hold a JSON object, not {type(raw).__name__}.")
    return raw


_MLX_FIELDS = ("lora_parameters", "fine_tune_type", "lora_layers")


def _parse_config(path: Path, raw: dict[str, Any]) -> LoraConfig:
    peft_type = raw.get("peft_type")
    if any(f in raw for f in _MLX_FIELDS) and (peft_type is None or "r" not in raw):
        raise AdapterFormatError(
            f"{path}: this is an MLX (mlx_lm) adapter config (fields {[f for f in _MLX_FIELDS if f in raw]}), "
            "not a PEFT one. Adaptrix reads PEFT LoRA adapters (peft_type 'LORA', adapter_model.safetensors). "
            "Fix: train or export the adapter with PEFT."
        )
    if peft_type is not None and (not isinstance(peft_type, str) or peft_type.upper() != "LORA"):
        raise AdapterFormatError(
            f"{path}: field 'peft_type' is {short(peft_type)}; Adaptrix serves LoRA adapters only (peft_type 'LORA')."
        )
    if "r" not in raw:
        raise _field_error(path, "r", "is missing; a LoRA config names its rank")
    for field in ("base_model_name_or_path", "task_type", "bias"):
        if raw.get(field) is not None and not isinstance(raw[field], str):
            raise _field_error(path, field, f"must be a string or null, got {short(raw[field])}")
    for field in ("use_rslora", "fan_in_fan_out"):
        if raw.get(field) is not None and not isinstance(raw[field], bool):
            raise _field_error(path, field, f"must be true or false, got {short(raw[field])}")
    for field, feature in _REFUSED_FIELDS.items():
        value = raw.get(field)
        if value not in (None, False, [], {}, ""):
            raise UnsupportedFeatureError(
                f"{path}: field {field!r} = {short(value)} asks for {feature}, which Adaptrix does not support. "
                "Fix: retrain without it, or merge it into the base model with PEFT first."
            )
    bias = raw.get("bias") or "none"
    if bias != "none":
        raise UnsupportedFeatureError(
            f"{path}: field 'bias' = {short(bias)} trains bias terms, which Adaptrix does not support (only 'none')."
        )
    layers = raw.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if layers is not None and not (
        isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
    ):
        raise _field_error(
            path, "layers_to_transform", f"must be a layer index or a list of layer indices (>= 0), got {short(layers)}"
        )
    layers_pattern = _as_str_tuple(path, "layers_pattern", raw.get("layers_pattern") or None)
    targets = parse_targets(path, raw, tuple(layers) if layers is not None else None, layers_pattern)
    return LoraConfig(
        r=_as_int(path, "r", raw["r"]),
        lora_alpha=_as_number(path, "lora_alpha", raw.get("lora_alpha", 8)),
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern=_as_pattern(path, "rank_pattern", raw.get("rank_pattern"), _as_int),
        alpha_pattern=_as_pattern(path, "alpha_pattern", raw.get("alpha_pattern"), _as_number),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        target_modules=targets.target_modules,
        exclude_modules=targets.exclude_modules,
        layers_to_transform=targets.layers_to_transform,
        layers_pattern=layers_pattern,
        bias=bias,
        base_model_name_or_path=raw.get("base_model_name_or_path") or None,
        task_type=raw.get("task_type"),
    )


def strip_prefixes(key: str) -> str:
    """``base_model.model.base_model.model.x`` -> ``x``: PEFT's prefix, however often it was applied."""
    while key.startswith(_PREFIX):
        key = key[len(_PREFIX) :]
    return key


def read_adapter(path: str | os.PathLike[str]) -> ParsedAdapter:
    """
    Read a PEFT LoRA adapter directory into tensors keyed by module name.

    ``adapter_model.safetensors`` is preferred; ``adapter_model.bin`` is read
    only with ``torch.load(weights_only=True)``, so a pickle that needs code
    execution is refused.

    Raises:
        AdapterFormatError: Missing files, unreadable weights, malformed tensors.
        UnsupportedFeatureError: DoRA, embedding LoRA, ``modules_to_save`` and the other refused features.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise AdapterFormatError(f"{directory}: not a directory. Expected a PEFT adapter directory.")
    config_path = directory / CONFIG_NAME
    raw = _read_json(config_path)
    config = _parse_config(config_path, raw)
    weights_file, state = _read_weights(directory)
    modules, unknown = _group_lora_tensors(weights_file, state)
    targets = parse_targets(config_path, raw, config.layers_to_transform, config.layers_pattern)
    kept, ignored = select(targets, modules, config_path=config_path, weights_file=weights_file)
    return ParsedAdapter(
        path=directory, config=config, raw_config=raw, modules={m: t for m, t in modules.items() if m in kept},
        unknown_keys=unknown, weights_file=weights_file, ignored=ignored,
    )


def _read_weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME):
        problem = not_a_regular_file(directory / name)
        if problem not in (None, "missing"):
            raise AdapterFormatError(f"{directory / name}: is {problem}; expected the adapter's weights file.")
    safetensors_path = directory / WEIGHTS_NAME
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return safetensors_path, load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AdapterFormatError(
                f"{safetensors_path}: unreadable safetensors file ({short(first, 160)[1:-1]}); it may be truncated or corrupt."
            ) from None
    bin_path = directory / PICKLE_WEIGHTS_NAME
    if bin_path.is_file():
        import pickle

        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
                state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # Never echo torch's text: it suggests weights_only=False, which would run the pickle's code.
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            if found:
                raise AdapterFormatError(
                    f"{bin_path}: refused, the pickle needs code execution to load (it calls {found.group(1)}). "
                    f"Adaptrix only reads weights-only pickles. Fix: re-save the adapter as {WEIGHTS_NAME}."
                ) from None
            raise AdapterFormatError(
                f"{bin_path}: refused, not a weights-only pickle (it is corrupt, or holds objects that need code "
                f"execution to load). Fix: re-save the adapter as {WEIGHTS_NAME}."
            ) from None
        except Exception as e:  # torch.load raises a zoo of types for corrupt files; none may escape as a traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise AdapterFormatError(
                f"{bin_path}: unreadable ({type(e).__name__}{': ' + short(first, 160)[1:-1] if first else ''}); it may be "
                f"truncated or corrupt. Fix: re-save the adapter as {WEIGHTS_NAME}."
            ) from None
        if not isinstance(state, dict):
            raise AdapterFormatError(f"{bin_path}: holds a {type(state).__name__}, not a dict of named tensors.")
        bad_keys = [k for k in state if not isinstance(k, str)]
        if bad_keys:
            raise AdapterFormatError(
                f"{bin_path}: holds a dict with non-string keys ({short(bad_keys[0])}, ...), not a dict of named tensors."
            )
        return bin_path, state
    others = sorted(p.name for p in directory.glob("*.safetensors")) + sorted(p.name for p in directory.glob("*.bin"))
    hint = ""
    if "adapters.safetensors" in others:
        hint = " It has adapters.safetensors, the MLX (mlx_lm) layout, which is not PEFT."
    elif others:
        hint = f" It has {', '.join(others[:3])}: a full model or a training checkpoint, not a PEFT adapter?"
    raise AdapterFormatError(
        f"{directory / WEIGHTS_NAME}: missing (nor {PICKLE_WEIGHTS_NAME}) next to {CONFIG_NAME}.{hint}"
    )


def _group_lora_tensors(
    weights_file: Path, state: Mapping[str, Any]
) -> tuple[dict[str, LoraTensors], tuple[str, ...]]:
    import torch

    _FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}  # noqa: N806

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        for fragment, feature in _REFUSED_KEYS:
            if fragment in key:
                raise UnsupportedFeatureError(
                    f"{weights_file}: tensor {short(key, 120)} belongs to {feature}, which Adaptrix does not support."
                )
        if ".lora_B." in key and key.endswith(".bias"):
            raise UnsupportedFeatureError(
                f"{weights_file}: tensor {short(key, 120)} is a LoRA bias (lora_bias), which Adaptrix does not support."
            )
        match = _LORA_KEY.match(strip_prefixes(key))
        if match is None:
            unknown.append(key)
            continue
        if not isinstance(tensor, torch.Tensor):
            raise AdapterFormatError(f"{weights_file}: {short(key, 120)} is a {type(tensor).__name__}, not a tensor.")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise AdapterFormatError(
                f"{weights_file}: tensor {short(key, 120)} has dtype {str(tensor.dtype).removeprefix('torch.')}; LoRA weights "
                "must be float16, bfloat16, float32 or float64."
            )
        if tensor.dim() != 2:
            raise AdapterFormatError(
                f"{weights_file}: tensor {short(key, 120)} has shape {short(tuple(tensor.shape))}; LoRA A and B are 2-D matrices."
            )
        slot = pairs.setdefault(match["module"], {})
        if match["kind"] in slot:
            raise AdapterFormatError(
                f"{weights_file}: two lora_{match['kind']} tensors for module {short(match['module'], 120)} "
                "(several adapter names in one file?)."
            )
        slot[match["kind"]] = tensor
    if not pairs:
        raise AdapterFormatError(f"{weights_file}: no LoRA tensors (keys ending in lora_A.weight / lora_B.weight).")
    modules = {}
    for module, slot in sorted(pairs.items()):
        if set(slot) != {"A", "B"}:
            missing = ({"A", "B"} - set(slot)).pop()
            raise AdapterFormatError(f"{weights_file}: module {short(module, 120)} has no lora_{missing} tensor.")
        a, b = slot["A"], slot["B"]
        if a.shape[0] == 0 or b.shape[1] == 0:
            raise AdapterFormatError(
                f"{weights_file}: module {short(module, 120)} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; rank 0."
            )
        if a.shape[0] != b.shape[1]:
            raise AdapterFormatError(
                f"{weights_file}: module {short(module, 120)} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                "their ranks (A rows, B columns) differ."
            )
        modules[module] = LoraTensors(A=a, B=b)
    if not _all_finite([t for pair in modules.values() for t in (pair.A, pair.B)]):
        bad = next(m for m, p in modules.items() if not (_exactly_finite(p.A) and _exactly_finite(p.B)))
        raise AdapterFormatError(f"{weights_file}: module {short(bad, 120)} has NaN or infinite values.")
    return modules, tuple(unknown)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """
    No NaN or infinity in any of *tensors*, checked with one fused (foreach) norm over all of them.

    NaN and infinities propagate through the norm, so a finite norm proves
    every element finite; a non-finite one (which overflow can also cause)
    is confirmed element by element. One fused call instead of one reduction
    per tensor: several times faster for the hundreds of small tensors of an
    adapter, and it does not degrade on a busy machine.
    """
    import torch

    if not tensors:
        return True
    total = torch.nn.utils.get_total_norm(tensors, foreach=True)
    return bool(torch.isfinite(total)) or all(_exactly_finite(t) for t in tensors)


def _exactly_finite(tensor: torch.Tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def write_adapter(
    directory: str | os.PathLike[str],
    config: Mapping[str, Any],
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor] | LoraTensors],
    *,
    overwrite: bool = False,
) -> Path:
    """
    Write a PEFT LoRA adapter directory atomically (temp dir, then rename).

    Keys follow PEFT's saved layout, ``base_model.model.<module>.lora_A.weight``,
    so PEFT, vLLM and LoRAX read the result.
    """
    from safetensors.torch import save_file

    dest = Path(directory)
    if dest.exists() and not overwrite:
        raise AdapterExistsError(f"{dest}: already exists. Fix: choose another directory or pass overwrite=True.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    storages: set[int] = set()

    def own(t: torch.Tensor) -> torch.Tensor:
        # safetensors refuses tensors that share memory: a split fused module shares A, and its Bs are views
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        return t

    for module, pair in modules.items():
        a, b = (pair.A, pair.B) if isinstance(pair, LoraTensors) else pair
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = own(a)
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = own(b)
    full_config = {"peft_type": "LORA", **config}
    tmp = make_dir(dest.parent, f".{dest.name}.")
    try:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(full_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def replace_dir(src: Path, dest: Path) -> None:
    """
    Move the finished directory *src* to *dest*, replacing an old *dest* without a moment of absence.

    Uses an exchange rename where the system has one; elsewhere the old *dest* is renamed aside
    first (``.NAME.old-PID``), which leaves a short gap.
    """
    if not dest.exists():
        os.replace(src, dest)
        return
    if exchange(src, dest):  # src now holds the old directory
        shutil.rmtree(src, ignore_errors=True)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
