"""The limits and batching knobs of one server (what ``adaptrix serve``'s options set)."""

from __future__ import annotations

import attrs

from ..prefixcache import DEFAULT_PREFIX_CACHE_TOKENS
from ..scheduler import DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK_MS


API_KEY_ENV = "ADAPTRIX_API_KEY"
ADMIN_KEY_ENV = "ADAPTRIX_ADMIN_KEY"
DEFAULT_PORT = 8000


@attrs.frozen
class ServerSettings:
    """
    Limits and batching of one server.

    Attributes:
        api_key: When set, every request needs ``Authorization: Bearer <key>`` (or ``x-api-key``).
        admin_key: The key of the endpoints that change the server for every client (load, unload, pin,
            reset stats); it is accepted wherever ``api_key`` is. Without it those endpoints are off when
            ``api_key`` is set, and open only on a server with no key at all.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        default_max_tokens: Used when a chat request gives no ``max_tokens``.
        max_body_bytes: Largest request body accepted (413 beyond).
        max_batch: Most rows decoded together (continuous batching: rows join and leave at every step).
        batch_window_ms: How long a lone request waits for others to batch with.
        exact: Old grouping: equal-length prompts only, no joining a running batch (output identical to a lone run).
        prefix_cache_tokens: Prompt tokens whose keys and values are kept so that prompts starting the same
            skip them (0 = off; never with *exact*).
        prefill_chunk_ms: A prefill predicted to hold the running rows up for longer runs in chunks of about
            this long between their steps (chunked prefill: a long prompt never holds their streams up for its
            whole prefill; 0 runs prefills whole).
    """

    api_key: str | None = None
    admin_key: str | None = None
    max_tokens_limit: int = attrs.field(default=1024, validator=attrs.validators.gt(0))
    default_max_tokens: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    max_body_bytes: int = attrs.field(default=1 << 20, validator=attrs.validators.gt(0))
    max_batch: int = attrs.field(default=DEFAULT_MAX_BATCH, validator=attrs.validators.gt(0))
    batch_window_ms: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    exact: bool = False
    prefix_cache_tokens: int = attrs.field(default=DEFAULT_PREFIX_CACHE_TOKENS, validator=attrs.validators.ge(0))
    prefill_chunk_ms: float = attrs.field(default=DEFAULT_PREFILL_CHUNK_MS, validator=attrs.validators.ge(0))

    def admin_state(self) -> str:
        """``"key"`` (admin key required), ``"off"`` (API key but no admin key) or ``"open"`` (no key at all)."""
        if self.admin_key is not None:
            return "key"
        return "off" if self.api_key is not None else "open"
