"""
The multiplexed model id of a request: which adapters it needs, as one string Ray can route on.

Ray Serve routes a request that carries a multiplexed model id to a replica
that already "holds" that id. For Adaptrix the id is the *set* of adapters a
request uses, weights left out (residency does not depend on them) and names
sorted, so ``"b:0.3+a:0.7"`` and ``"a+b"`` go to the same replica:

- ``"pirate"`` -> ``"pirate"``; ``"json:0.7+pirate:0.3"`` -> ``"json+pirate"``;
- the base model (``"base"``, ``""``, the base model's own name) -> ``""``: Ray
  then routes by load alone, and the replica never calls the loader with it;
- ``"auto"`` is decided by a replica's router first (see the ingress).

A ``model`` string that does not parse also gets ``""``: the replica that
receives it answers with the same 400 a single server gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import SelectionError
from ..selection import BASE_NAMES, parse_selection


AUTO = "auto"


def id_of(names: Iterable[str]) -> str:
    """The canonical id of a set of adapter names (``""`` for none)."""
    return "+".join(sorted(set(names)))


def names_of(model_id: str) -> list[str]:
    """The adapter names inside an id (``[]`` for the base model)."""
    return [n for n in model_id.split("+") if n] if model_id else []


def model_id_for(model: str, *, base_model_name: str | None = None) -> str | None:
    """
    The multiplexed id of an API ``model`` value, ``None`` for ``"auto"`` (the router must decide first).

    Unparseable values map to ``""`` so the replica reports the error with the server's own message.
    """
    name = model.strip()
    if name.lower() == AUTO:
        return None
    if name.lower() in BASE_NAMES or (base_model_name is not None and name == base_model_name):
        return ""
    try:
        return id_of(parse_selection(name))
    except SelectionError:
        return ""


def routing_text(path: str, body: Mapping[str, Any]) -> str:
    """The text the router sees for an ``"auto"`` request: the last user message, or the (first) prompt."""
    if path.endswith("/chat/completions"):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, Mapping) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
                return ""
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt else ""
    return prompt if isinstance(prompt, str) else ""


__all__ = ["AUTO", "id_of", "model_id_for", "names_of", "routing_text"]
