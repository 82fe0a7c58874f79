"""``serve``: run the app under uvicorn until interrupted."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .app import create_app
from .settings import DEFAULT_PORT, ServerSettings


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine


def serve(
    engine: AdaptrixEngine,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    settings: ServerSettings | None = None,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the server until interrupted (blocking); *on_ready* gets the URL once the socket listens."""
    import uvicorn

    app = create_app(engine, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            if server.started:
                on_ready(f"http://{host}:{port}")

        server.startup = startup  # type: ignore[method-assign]
    server.run()
