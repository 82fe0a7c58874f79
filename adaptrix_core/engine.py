"""
The engine: one base model, a library of adapters, and text in -> text out.

``AdaptrixEngine`` is what the CLI, the HTTP server and Python users share. It
loads the base model (hub id, local path or the embedded default), attaches the
runtime, and keeps adapters resident through the dynamic loader
(:mod:`adaptrix_core.cache`): a request that names an adapter that is not
resident loads it from the library, and the least recently used ones are
evicted to stay within budget, never while a request uses them::

    with AdaptrixEngine() as eng:
        eng.load_adapter("pirate")                       # resident and active
        print(eng.query("Where is the treasure?"))       # uses the active set
        print(eng.query("Hi", adapters="json:0.7+pirate:0.3"))
        for piece in eng.query("Hello", adapters=None, stream=True):   # the base model
            print(piece, end="")
"""

from __future__ import annotations

import enum
import os
import threading
import time

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import pluggy

from .cache import AdapterCache
from .config import AdaptrixConfig, load_config
from .exceptions import AdapterNotFoundError, AdaptrixError, SelectionError
from .generation import Decoder, GenerationRequest
from .routing import resolve_router_name
from .selection import SelectionLike, format_selection, normalize_selection
from .textstream import TextStream


if TYPE_CHECKING:
    from torch import nn

    from .library import Library
    from .runtime import AdaptedModel, LoadReport
    from .types import Router, Routing


class _Active(enum.Enum):
    ACTIVE = "active"

    def __repr__(self) -> str:
        return "ACTIVE"


ACTIVE = _Active.ACTIVE
"""Default for ``adapters=``: the engine's active set (chosen with ``load_adapter`` / ``switch_adapter``)."""

AUTO = "auto"
"""``adapters="auto"``: the configured router picks, per prompt."""

Adapters = Union[SelectionLike, Literal["auto"], _Active]
"""What ``query``/``chat``/``generate`` accept: ``ACTIVE``, ``None`` (base), a name, ``"a:0.7+b:0.3"``, a list, a dict or ``"auto"``."""

Message = Mapping[str, str]
"""A chat message: ``{"role": "user" | "assistant" | "system", "content": "..."}``."""


class AdaptrixEngine:
    """
    A base model plus any number of adapters, behind one object.

    Args:
        model: Hub id (from the local HF cache), local path, or ``None`` for
            the configured default (the embedded SmolLM2-135M-Instruct).
        config: Settings; :func:`adaptrix_core.config.load_config` when omitted.
        pm: Plugin manager (architectures, routers); the default one when omitted.
        device: ``cpu``, ``cuda``, ``mps`` or ``auto`` (overrides the config).
        dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (overrides the config).
        library: Where adapter names are looked up; ``Library()`` when omitted.
        cache_max_bytes: Byte budget of resident adapters (default: config; 0 = no limit).
        cache_max_adapters: Count limit of resident adapters (default: config; 0 = no limit).
        progress: Called with a short description of each start-up step (the CLI shows them).

    Use it as a context manager, or call :meth:`close`, to free the model.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        config: AdaptrixConfig | None = None,
        pm: pluggy.PluginManager | None = None,
        device: str | None = None,
        dtype: str | None = None,
        library: Library | None = None,
        cache_max_bytes: int | None = None,
        cache_max_adapters: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from .models import load_base_model

        config = config or load_config()
        ref = str(model) if model is not None else config.base_model
        if progress is not None:
            progress(f"loading base model {ref}")
        loaded, tokenizer = load_base_model(ref, config=config, device=device, dtype=dtype)
        self._setup(
            loaded, tokenizer, config=config, pm=pm, library=library, name=ref, owns_model=True,
            cache_max_bytes=cache_max_bytes, cache_max_adapters=cache_max_adapters, progress=progress,
        )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        tokenizer: Any,
        *,
        config: AdaptrixConfig | None = None,
        pm: pluggy.PluginManager | None = None,
        library: Library | None = None,
        name: str | None = None,
        cache_max_bytes: int | None = None,
        cache_max_adapters: int | None = None,
    ) -> AdaptrixEngine:
        """
        Wrap an already loaded model and its tokenizer (e.g. a tiny test model).

        If *model* is already attached, its resident adapters are kept (pinned:
        they may exist only in memory). :meth:`close` detaches only what the
        engine attached itself.
        """
        engine = cls.__new__(cls)
        engine._setup(
            model, tokenizer, config=config or load_config(), pm=pm, library=library,
            name=name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__),
            owns_model=False, cache_max_bytes=cache_max_bytes, cache_max_adapters=cache_max_adapters, progress=None,
        )
        return engine

    def _setup(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        config: AdaptrixConfig,
        pm: pluggy.PluginManager | None,
        library: Library | None,
        name: str,
        owns_model: bool,
        cache_max_bytes: int | None,
        cache_max_adapters: int | None,
        progress: Callable[[str], None] | None,
    ) -> None:
        from .runtime import attach

        self.config = config
        self.pm = pm
        self.model_name = name
        self.tokenizer = tokenizer
        self._library = library
        self._router: Router | None = None
        self._owns_model = owns_model
        self._lock = threading.Lock()
        self._sources: dict[str, Path] = {}
        self._layers: dict[str, Any] = {}
        self._active: dict[str, float] = {}
        if progress is not None:
            progress("attaching the adapter runtime")
        existing = getattr(model, "_adaptrix_attached", None)
        self._attached_here = existing is None
        self.am: AdaptedModel = existing if existing is not None else attach(model, pm=pm)
        self.cache = AdapterCache(
            load=self._load_into_runtime,
            unload=self.am.unload_adapter,
            max_bytes=config.cache_max_bytes if cache_max_bytes is None else cache_max_bytes,
            max_adapters=config.cache_max_adapters if cache_max_adapters is None else cache_max_adapters,
            size_hint=self._size_hint,
            overhead=self.am.plan_bytes,
            shed=self.am.drop_plans,
        )
        for adapter in self.am.adapters:
            self.cache.adopt(adapter, self.am.resident_bytes(adapter))
        self.decoder = Decoder(
            self.am, tokenizer, eos_token_ids=self._eos_token_ids(), pad_token_id=self._pad_token_id()
        )
        self._closed = False

    # lifecycle ------------------------------------------------------------------

    def __enter__(self) -> AdaptrixEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """
        Free the adapters the engine loaded and, if it attached the runtime, detach it (the model is as before).

        Adapters that were already on a model passed to :meth:`from_model` stay there.
        """
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.cache.clear(keep_adopted=not self._attached_here)
        if self._attached_here:
            self.am.detach()

    def __repr__(self) -> str:
        return (
            f"<AdaptrixEngine {self.model_name!r} ({self.am.architecture}) active={format_selection(self._active)!r} "
            f"resident={self.cache.resident()}>"
        )

    @property
    def model(self) -> nn.Module:
        return self.am.model

    @property
    def library(self) -> Library:
        """Where adapter names are looked up (created on first use)."""
        if self._library is None:
            from .library import Library

            self._library = Library()
        return self._library

    # adapters -------------------------------------------------------------------

    def _source(self, name: str) -> Path:
        source = self._sources.get(name)
        return source if source is not None else self.library.path(name)

    def _load_into_runtime(self, name: str) -> int:
        """The cache's loader: read the adapter (explicit source or library) into the runtime."""
        self.am.load_adapter(name, self._source(name), layers=self._layers.get(name))
        return self.am.resident_bytes(name)

    def _size_hint(self, name: str) -> int | None:
        from .library import weights_file

        try:
            found = weights_file(self._source(name))
        except AdaptrixError:
            return None
        return found.stat().st_size if found is not None else None

    def load_adapter(
        self,
        name: str,
        source: str | os.PathLike[str] | None = None,
        *,
        weight: float = 1.0,
        activate: bool = True,
        pin: bool = False,
        layers: Any = None,
    ) -> LoadReport:
        """
        Make adapter *name* resident and (by default) add it to the active set.

        Args:
            name: A library adapter, or the name to give *source*.
            source: A PEFT directory to load instead of the library's.
            weight: Its weight in the active set.
            activate: Add it to the active set (``False``: only warm the cache).
            pin: Never evict it.
            layers: Load only this band of its layers (see ``AdaptedModel.load_adapter``).

        Raises:
            AdapterNotFoundError: No such adapter in the library (the message lists them).
            AdapterFormatError, AdapterMismatchError, UnsupportedFeatureError: It cannot serve on this model.
        """
        from .exceptions import AdapterExistsError
        from .runtime import check_adapter_name

        check_adapter_name(name)
        wanted = (Path(source) if source is not None else self._sources.get(name),
                  layers if layers is not None else self._layers.get(name))
        if name in self.cache and wanted != (self._sources.get(name), self._layers.get(name)):
            raise AdapterExistsError(
                f"adapter {name!r} is already resident from another source or layer band. "
                "Fix: unload_adapter() it first, or load the new one under another name."
            )
        previous = (self._sources.get(name), self._layers.get(name))
        self._remember(name, *wanted)
        try:
            self.cache.load(name, pin=pin)
        except BaseException:
            self._remember(name, *previous)  # a failed load leaves no stale source behind
            raise
        if activate:
            with self._lock:
                self._active[name] = float(weight)
        return self.am.report(name)

    def _remember(self, name: str, source: Path | None, layers: Any) -> None:
        for store, value in ((self._sources, source), (self._layers, layers)):
            if value is None:
                store.pop(name, None)
            else:
                store[name] = value

    def unload_adapter(self, name: str) -> None:
        """
        Drop *name* from the active set and free it.

        Raises:
            AdapterNotFoundError: It is neither active nor resident.
            AdapterInUseError: A running request uses it (it stays active and resident).
        """
        with self._lock:
            was_active = name in self._active
        if name in self.cache:
            self.cache.unload(name)
        elif not was_active:
            loaded = ", ".join(self.cache.resident()) or "none"
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded. Loaded: {loaded}.")
        with self._lock:
            self._active.pop(name, None)
        self._sources.pop(name, None)
        self._layers.pop(name, None)

    def switch_adapter(self, old: str, new: str) -> None:
        """
        Replace *old* with *new* in the active set, same weight and position; *old* stays cached.

        Raises:
            AdapterNotFoundError: *old* is not active, or *new* is not in the library.
        """
        start = time.perf_counter()
        with self._lock:
            if old not in self._active:
                active = format_selection(self._active)
                raise AdapterNotFoundError(f"adapter {old!r} is not active (active: {active}); nothing to switch.")
        self.cache.load(new)
        with self._lock:
            if old in self._active:
                self._active = {(new if k == old else k): w for k, w in self._active.items()}
        self.cache.record_switch(time.perf_counter() - start)

    def set_active(self, adapters: SelectionLike) -> None:
        """Replace the whole active set (loading what is missing); ``None`` = the base model."""
        weights = normalize_selection(adapters)
        for name in weights:
            self.cache.load(name)
        with self._lock:
            self._active = dict(weights)

    def active(self) -> dict[str, float]:
        """The active set: adapter name -> weight (empty = the base model)."""
        with self._lock:
            return dict(self._active)

    def resident(self) -> list[str]:
        """Adapters in memory now, least recently used first."""
        return self.cache.resident()

    # routing ----------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """The configured router (``config.router``), built on first use."""
        if self._router is None:
            from .routing import get_router

            self._router = get_router(self.config.router, self.pm)
        return self._router

    def route(self, text: str) -> Routing:
        """Ask the router which adapter(s) should answer *text* (resident ones win near ties)."""
        from .exceptions import RoutingError
        from .types import Routing

        routing = self.router.route(text, self.library.list(), resident=self.cache.resident())
        if not isinstance(routing, Routing):
            raise RoutingError(f"router {self.router.name!r} returned {routing!r}, not a Routing.")
        return routing

    def resolve(self, adapters: Adapters, text: str = "") -> tuple[dict[str, float], Routing | None]:
        """Turn an ``adapters=`` value into name -> weight (and the routing when ``"auto"``)."""
        if adapters is ACTIVE:
            return self.active(), None
        if isinstance(adapters, str) and adapters.strip().lower() == AUTO:
            routing = self.route(text)
            return dict(routing.adapters), routing
        return normalize_selection(adapters), None

    # prompts ------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation, ready for the assistant's turn (the tokenizer's chat template if any)."""
        if not messages:
            raise SelectionError("a chat needs at least one message.")
        if self.has_chat_template:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        lines = [f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}" for m in messages]
        return self.encode("\n".join([*lines, "Assistant:"]))

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw prompt (no chat template)."""
        return list(self.tokenizer(text)["input_ids"])

    def _prompt_ids(self, text: str, chat_template: bool | None, system: str | None) -> list[int]:
        use_template = self.has_chat_template if chat_template is None else chat_template
        if use_template:
            messages = [{"role": "system", "content": system}] if system else []
            return self.encode_chat([*messages, {"role": "user", "content": text}])
        return self.encode(f"{system}\n{text}" if system else text)

    def _eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        config_eos = getattr(getattr(self.am.model, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif isinstance(config_eos, list | tuple):
            ids.update(int(t) for t in config_eos)
        return sorted(ids)

    def _pad_token_id(self) -> int:
        for candidate in (getattr(self.tokenizer, "pad_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return 0

    # generation --------------------------------------------------------------------

    def query(
        self,
        text: str,
        adapters: Adapters = ACTIVE,
        *,
        max_new_tokens: int = 64,
        stream: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        system: str | None = None,
        chat_template: bool | None = None,
        repetition_penalty: float = 1.0,
    ) -> str | TextStream:
        """
        Answer *text*; with ``stream=True`` return a :class:`TextStream` of pieces as they are generated.

        Args:
            text: The user's message (wrapped in the chat template when the tokenizer has one).
            adapters: ``ACTIVE`` (default: the active set), ``None``/``"base"`` (the base model),
                ``"pirate"``, ``"a:0.7+b:0.3"``, ``["a", "b"]``, ``{"a": 0.7}`` or ``"auto"`` (the router).
            max_new_tokens: Upper bound on generated tokens.
            temperature: 0 = greedy (deterministic); > 0 samples.
            top_p: Nucleus sampling mass.
            seed: Makes sampling reproducible.
            stop: Strings that end the answer.
            system: An optional system message.
            chat_template: Force the chat template on or off (default: on when the tokenizer has one).
            repetition_penalty: > 1 discourages repeating prompt or answer tokens (1.0 = off; transformers' rule).

        Raises:
            AdapterNotFoundError: An adapter is neither resident nor in the library.
            SelectionError, GenerationError: A malformed selection or generation option.
        """
        ids = self._prompt_ids(text, chat_template, system)
        selection, routing = self.resolve(adapters, text)
        request = GenerationRequest(
            ids, selection, max_new_tokens, temperature, top_p, seed, tuple(stop), repetition_penalty=repetition_penalty
        )
        result = self._stream([request])
        result.routing = routing
        return result if stream else result.text()

    def chat(
        self,
        messages: Sequence[Message],
        adapters: Adapters = ACTIVE,
        *,
        max_new_tokens: int = 128,
        stream: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        repetition_penalty: float = 1.0,
    ) -> str | TextStream:
        """Answer the last message of a conversation (see :meth:`query` for the options)."""
        ids = self.encode_chat(messages)
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        selection, routing = self.resolve(adapters, last_user)
        request = GenerationRequest(
            ids, selection, max_new_tokens, temperature, top_p, seed, tuple(stop), repetition_penalty=repetition_penalty
        )
        result = self._stream([request])
        result.routing = routing
        return result if stream else result.text()

    def generate(
        self,
        prompts: Sequence[str],
        adapters: Adapters | Sequence[Adapters] = ACTIVE,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat_template: bool | None = None,
        repetition_penalty: float = 1.0,
    ) -> list[str]:
        """
        Answer a batch of prompts in one pass per token, each row with its own adapters.

        *adapters* is either one value for every row or a list with one per
        row (e.g. ``["pirate", None, "auto", {"a": .5, "b": .5}]``). Prompts of
        different lengths are left-padded with an attention mask.
        """
        if isinstance(prompts, str):
            raise SelectionError("generate() takes a list of prompts; use query() for one.")
        per_row: Sequence[Adapters]
        if isinstance(adapters, list | tuple):
            if len(adapters) != len(prompts):
                raise SelectionError(f"adapters= names {len(adapters)} rows but there are {len(prompts)} prompts.")
            per_row = adapters
        else:
            per_row = [adapters] * len(prompts)  # type: ignore[list-item]
        requests = []
        for text, row in zip(prompts, per_row):
            selection, _ = self.resolve(row, text)
            ids = self._prompt_ids(text, chat_template, None)
            requests.append(GenerationRequest(
                ids, selection, max_new_tokens, temperature, top_p, seed, tuple(stop),
                repetition_penalty=repetition_penalty,
            ))
        texts = [""] * len(requests)
        held = self.lease(requests)
        try:
            for pieces in self.decoder.stream(requests):
                for piece in pieces:
                    texts[piece.index] += piece.text
        finally:
            self.cache.release(held)
        return texts

    def lease(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """
        Check *requests* and take the cache's lease on every adapter they use (loading on demand).

        Pair with ``engine.cache.release(held)``; the server calls this before it queues a request,
        so an unknown adapter is an HTTP error before any streaming starts.
        """
        for request in requests:
            self.decoder.check(request)
        return self.cache.acquire(n for r in requests for n in r.selection)

    def _stream(self, requests: Sequence[GenerationRequest]) -> TextStream:
        """Lease every adapter the batch uses, then decode lazily."""
        held = self.lease(requests)
        return TextStream(self.decoder.stream(requests), lambda: self.cache.release(held))

    # status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Base model, device, active set, and the dynamic loader's stats (JSON-able)."""
        params = next(self.am.model.parameters())
        return {
            "base_model": self.model_name,
            "architecture": self.am.architecture,
            "model_class": type(self.am.model).__name__,
            "device": str(params.device),
            "dtype": str(params.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.am.model.parameters()),
            "chat_template": self.has_chat_template,
            "active": self.active(),
            "resident": self.cache.resident(),
            "router": resolve_router_name(self.config.router, self.pm),
            "cache": self.cache.stats(),
        }
