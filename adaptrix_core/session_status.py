"""
``adaptrix status`` without a server: what the next ``query`` or ``chat`` will use, read in milliseconds.

Nothing here loads the base model. Resident memory, hits, misses and load
latency belong to a running process, so they come from ``adaptrix status
--server URL``; the local view says so instead of showing a fresh process's
zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import EMBEDDED_MODEL, AdaptrixConfig, load_config
from .exceptions import AdapterNotFoundError
from .library import Library, weights_file


def _model_line(ref: str, config: AdaptrixConfig) -> dict[str, Any]:
    """The configured base model and whether it is ready to load (the embedded one is converted once)."""
    if ref == EMBEDDED_MODEL:
        from .embedded import embedded_model_dir, is_prepared

        directory = embedded_model_dir(config)
        return {"base_model": ref, "model_path": str(directory), "prepared": is_prepared(directory)}
    path = Path(ref).expanduser()
    return {"base_model": ref, "model_path": str(path) if path.exists() else None, "prepared": None}


def _adapter_line(library: Library, name: str, weight: float) -> dict[str, Any]:
    try:
        info = library.get(name)
    except AdapterNotFoundError:
        return {"name": name, "weight": weight, "found": False, "bytes": None, "path": None, "shipped": False}
    weights = weights_file(info.path) if info.path is not None else None
    return {
        "name": name, "weight": weight, "found": True, "shipped": info.shipped,
        "bytes": weights.stat().st_size if weights is not None else None,
        "path": str(info.path) if info.path is not None else None,
    }


def local_status(model: str | None = None, *, config: AdaptrixConfig | None = None) -> dict[str, Any]:
    """The session's active set, each adapter's file size and place, and the configured base model (JSON-able)."""
    from .state import StateStore

    config = config or load_config()
    store = StateStore(config=config)
    state = store.read()
    library = Library(config.library_dir)
    return {
        **_model_line(model or config.base_model, config),
        "device": config.device,
        "dtype": config.dtype,
        "active": dict(state.active),
        "adapters": [_adapter_line(library, n, w) for n, w in state.active.items()],
        "state_file": str(store.path),
        "updated": state.updated,
        "library_count": len(library.names()),
    }


def render_local_status(data: dict[str, Any]) -> None:
    """Print :func:`local_status` as a short table."""
    from rich.console import Console
    from rich.table import Table

    from .selection import format_selection

    console = Console()
    head = Table(box=None, show_header=False)
    head.add_column(style="bold")
    head.add_column()
    prepared = {True: "converted, ready", False: "converted on first use", None: ""}[data.get("prepared")]
    head.add_row("base model", f"{data['base_model']}" + (f" ({prepared})" if prepared else ""))
    head.add_row("device", f"{data['device']}, {data['dtype']}")
    active = data.get("active") or {}
    head.add_row("active", format_selection(active) if active else "none: answers come from the base model")
    head.add_row("session file", f"{data['state_file']}" + (f" (changed {data['updated']})" if data.get("updated") else ""))
    head.add_row("library", f"{data['library_count']} {'adapter' if data['library_count'] == 1 else 'adapters'} "
                            "(`adaptrix list-adapters`)")
    console.print(head)
    if data.get("adapters"):
        table = Table("active adapter", "weight", "size on disk", "where", box=None)
        for a in data["adapters"]:
            size = "-" if a["bytes"] is None else f"{a['bytes'] / 2**20:.1f} MiB"
            where = a["path"] or "not in the library (`adaptrix unload` it)"
            table.add_row(a["name"], f"{a['weight']:g}", size, where + (" (shipped)" if a["shipped"] else ""))
        console.print(table)
        console.print("Clear them with `adaptrix unload --all`, or answer once without them with `--no-adapter`.",
                      style="dim")
    console.print("Memory, cache hits and load latency belong to a running server: `adaptrix status --server URL`.",
                  style="dim")
