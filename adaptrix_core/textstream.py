"""
The pieces of one streamed answer, as the engine hands them to Python callers.

A :class:`TextStream` holds its adapters' lease until it is exhausted or
closed, so adapters are never evicted under a running answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .generation import Piece
    from .types import Routing


class TextStream:
    """
    The pieces of one streamed answer; iterate it for text as it is generated.

    The adapters it uses stay leased until it is exhausted or closed (also
    on garbage collection), so close it if you stop early. After the end,
    ``finish_reason`` and ``completion_tokens`` are set.
    """

    def __init__(self, pieces: Iterator[list[Piece]], release: Callable[[], None]) -> None:
        self._pieces = pieces
        self._release: Callable[[], None] | None = release
        self._buffer: list[str] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.routing: Routing | None = None
        """The router's decision when ``adapters="auto"``."""

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while not self._buffer:
            if self._release is None:
                raise StopIteration
            try:
                pieces = next(self._pieces)
            except BaseException:  # the end (StopIteration) or an error: release the adapters either way
                self.close()
                raise
            for piece in pieces:
                self.completion_tokens = piece.tokens
                if piece.finish_reason is not None:
                    self.finish_reason = piece.finish_reason
                if piece.text:
                    self._buffer.append(piece.text)
        return self._buffer.pop(0)

    def text(self) -> str:
        """Everything that is left, joined."""
        return "".join(self)

    def close(self) -> None:
        """Stop generating and release the adapters."""
        release, self._release = self._release, None
        if release is not None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
            release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown: nothing left to release into
            pass
