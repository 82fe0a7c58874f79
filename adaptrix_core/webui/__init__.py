"""
The web interface served at ``/ui`` by ``adaptrix serve`` (and opened by ``adaptrix ui``).

Static HTML, CSS and plain JavaScript shipped as package data; the page talks
only to the server's own OpenAI-compatible endpoints plus ``POST /v1/route``.
"""

from .router import is_public_path, make_ui_router


__all__ = ["is_public_path", "make_ui_router"]
