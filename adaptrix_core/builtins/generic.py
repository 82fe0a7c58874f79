"""
The generic fallback pattern: a guessed module map for a decoder no installed plugin knows.

Registered as a core default (so it works with nothing installed) with ``trylast=True`` and confidence 0.3:
any real plugin outranks it. It finds the decoder layer stack by structure (the longest ``ModuleList`` of
identical blocks that hold ``Linear`` / ``Conv1D`` layers) and names each block's layers by the names
architectures commonly use (``q_proj``, ``query_key_value``, ``dense_h_to_4h``, ``fc1`` ...). The reason it
gives, and every load report on such a model, say that the map is a guess.

It claims no adapters: adapters for such a model are checked by module names and shapes only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..hookspecs import hookimpl
from ..types import Detection, ModuleMap


if TYPE_CHECKING:
    from torch import nn


ARCHITECTURE = "generic"
CONFIDENCE = 0.3

_ATTN_PARENTS = ("attn", "attention")
_MLP_PARENTS = ("mlp", "ffn", "feed_forward", "feedforward")
# leaf name -> role, wherever the leaf sits in the block
_ANYWHERE = {
    **dict.fromkeys(("q_proj", "query", "wq", "q_lin", "query_proj"), "attn.q"),
    **dict.fromkeys(("k_proj", "key", "wk", "k_lin", "key_proj"), "attn.k"),
    **dict.fromkeys(("v_proj", "value", "wv", "v_lin", "value_proj"), "attn.v"),
    **dict.fromkeys(("query_key_value", "c_attn", "qkv_proj", "wqkv", "qkv", "w_pack"), "attn.qkv"),
    **dict.fromkeys(("o_proj", "out_proj", "out_lin"), "attn.o"),
    **dict.fromkeys(("gate_proj",), "mlp.gate"),
    **dict.fromkeys(("up_proj", "fc1", "dense_h_to_4h", "c_fc", "fc_in", "lin1"), "mlp.up"),
    **dict.fromkeys(("down_proj", "fc2", "dense_4h_to_h", "fc_out", "lin2"), "mlp.down"),
}
# leaf names whose role depends on whether they sit in the attention or the MLP sub-module
_BY_PARENT = {
    "attn": dict.fromkeys(("dense", "c_proj", "wo", "proj", "o"), "attn.o"),
    "mlp": dict.fromkeys(("c_proj", "wo", "proj", "dense_out", "w2"), "mlp.down")
    | dict.fromkeys(("w1", "wi", "gate"), "mlp.up"),
}


@attrs.frozen
class Guess:
    """What the generic pattern found: the layer stack, the role of each layer inside a block, what it left out."""

    stack: str
    layers: int
    block: str
    roles: dict[str, str]
    """Role -> module path inside one block (``self_attention.query_key_value``)."""
    unmatched: tuple[str, ...] = ()
    """Linear / Conv1D paths inside a block whose role could not be named (left unwrapped)."""

    def module_map(self) -> ModuleMap:
        return ModuleMap(ARCHITECTURE, {role: f"{self.stack}.*.{path}" for role, path in self.roles.items()})

    def reason(self, model: nn.Module) -> str:
        roles = ", ".join(sorted(self.roles))
        left = f"; left out {', '.join(self.unmatched)}" if self.unmatched else ""
        return (
            f"a guess from the structure of {type(model).__name__}: {self.layers} {self.block} blocks under "
            f"{self.stack}, roles {roles} named by common module names{left}"
        )


def _is_adaptable(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _find_stack(model: nn.Module) -> tuple[str, Any] | None:
    """The longest ModuleList of same-class blocks holding adaptable layers (ties: the shorter name)."""
    import torch

    best: tuple[int, int, str, Any] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0 or not name:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(_is_adaptable(m) for m in module[0].modules()):
            continue
        key = (len(module), -len(name), name, module)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else (best[2], best[3])


def _role_of(path: str) -> str | None:
    parent, _, leaf = path.rpartition(".")
    leaf = leaf.lower()
    parent = parent.lower()
    in_attn = any(w in parent for w in _ATTN_PARENTS)
    in_mlp = any(w in parent for w in _MLP_PARENTS)
    role = _ANYWHERE.get(leaf)
    if role is not None:
        return None if (in_mlp and role.startswith("attn.")) or (in_attn and role.startswith("mlp.")) else role
    if in_attn:
        return _BY_PARENT["attn"].get(leaf)
    if in_mlp:
        return _BY_PARENT["mlp"].get(leaf)
    return None


def guess(model: nn.Module) -> Guess | None:
    """Guess *model*'s layer stack and roles, or ``None`` when there is no stack with a named layer."""
    found = _find_stack(model)
    if found is None:
        return None
    stack, blocks = found
    by_role: dict[str, list[str]] = {}
    unmatched = []
    for path, module in blocks[0].named_modules():
        if not path or not _is_adaptable(module):
            continue
        role = _role_of(path)
        if role is None:
            unmatched.append(path)
        else:
            by_role.setdefault(role, []).append(path)
    roles = {role: paths[0] for role, paths in by_role.items() if len(paths) == 1}
    unmatched.extend(p for paths in by_role.values() if len(paths) > 1 for p in paths)  # ambiguous: leave out
    if not roles:
        return None
    return Guess(stack, len(blocks), type(blocks[0]).__name__, roles, tuple(sorted(unmatched)))


@hookimpl(trylast=True)
def detect_architecture(model: nn.Module) -> Detection | None:
    found = guess(model)
    return None if found is None else Detection(ARCHITECTURE, CONFIDENCE, found.reason(model))


@hookimpl(trylast=True)
def map_modules(architecture: str, model: nn.Module | None) -> ModuleMap | None:
    if architecture != ARCHITECTURE or model is None:
        return None
    found = guess(model)
    return None if found is None else found.module_map()
