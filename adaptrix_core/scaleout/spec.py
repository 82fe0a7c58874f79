"""
What a replicated deployment is made of: how each replica builds its engine, and how many replicas run.

Both are plain attrs values (picklable), built on the driver and shipped to
every replica, so replicas on other machines need no environment of their own
beyond a copy of Adaptrix and access to the library directory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..exceptions import ConfigError


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine


def _positive_or_none(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{attribute.name} must be positive, got {value}.")


@attrs.frozen
class EngineSpec:
    """
    How a replica builds its engine: one attached model, its adapter cache and (in the server app) its scheduler.

    Attributes:
        model: Base model (hub id or path) or ``None`` for the configured default.
        library_dir: The adapter library every replica reads (a shared directory on a real cluster).
        shipped_dir: Folder of shipped adapters; ``None`` = the default, ``""`` = none.
        device, dtype: As for :class:`~adaptrix_core.engine.AdaptrixEngine`.
        cache_max_bytes, cache_max_adapters: Each replica's own resident-adapter budget.
        preload, pin: Adapters loaded (and pinned) on every replica at start.
        threads: torch CPU threads per replica (``None``: torch's default).
        factory: Instead of the fields above, a picklable callable returning a ready engine.
    """

    model: str | None = None
    library_dir: str | None = None
    shipped_dir: str | None = None
    device: str | None = None
    dtype: str | None = None
    cache_max_bytes: int | None = None
    cache_max_adapters: int | None = None
    preload: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    pin: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    threads: int | None = attrs.field(default=None, validator=_positive_or_none)
    factory: Callable[[], AdaptrixEngine] | None = None

    def build(self) -> AdaptrixEngine:
        """Load the model and attach the runtime (runs inside each replica)."""
        from ..engine import AdaptrixEngine
        from ..library import Library

        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        if self.factory is not None:
            engine = self.factory()
        else:
            library = None
            if self.library_dir is not None or self.shipped_dir is not None:
                library = Library(self.library_dir, shipped_dir=self.shipped_dir)
            engine = AdaptrixEngine(
                self.model, device=self.device, dtype=self.dtype, library=library,
                cache_max_bytes=self.cache_max_bytes, cache_max_adapters=self.cache_max_adapters,
            )
        try:
            for name in self.pin:
                engine.load_adapter(name, activate=False, pin=True)
            for name in self.preload:
                engine.load_adapter(name, activate=False)
        except BaseException:
            engine.close()
            raise
        return engine


@attrs.frozen
class ScaleOutOptions:
    """
    How many engine replicas run and how Ray scales them.

    Attributes:
        replicas: Replicas at start (a fixed count unless ``min_replicas``/``max_replicas`` are given).
        min_replicas, max_replicas: Autoscaling bounds; either turns autoscaling on.
        target_ongoing_requests: Autoscaling target of in-flight requests per replica.
        max_ongoing_requests: Most requests one replica takes at once (beyond: queued at the router).
        replica_cpus: Ray CPUs reserved per engine replica (scheduling only; threads are ``EngineSpec.threads``).
        max_sets_per_replica: Size of Ray's per-replica list of adapter sets it routes on
            (Adaptrix's own cache, not this list, decides what stays in memory).
        retries: Times a request whose replica died before answering is sent to another one.
        app_name: The Ray Serve application name.
    """

    replicas: int = attrs.field(default=2, validator=_positive_or_none)
    min_replicas: int | None = attrs.field(default=None)
    max_replicas: int | None = attrs.field(default=None, validator=_positive_or_none)
    target_ongoing_requests: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_ongoing_requests: int = attrs.field(default=32, validator=_positive_or_none)
    replica_cpus: float = attrs.field(default=1.0)
    max_sets_per_replica: int = attrs.field(default=64, validator=_positive_or_none)
    retries: int = attrs.field(default=1)
    app_name: str = "adaptrix"

    def __attrs_post_init__(self) -> None:
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(self.replicas, low)
        if low < 0:
            raise ConfigError(f"min_replicas must be >= 0, got {low}.")
        if not low <= self.replicas <= high:
            raise ConfigError(
                f"replicas={self.replicas} must lie between min_replicas={low} and max_replicas={high}. "
                "Fix: adjust --replicas, --min-replicas or --max-replicas."
            )
        if self.replica_cpus < 0 or self.retries < 0:
            raise ConfigError("replica_cpus and retries must be >= 0.")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None or self.target_ongoing_requests is not None

    def deployment_options(self) -> dict[str, Any]:
        """Options for the engine deployment (``Deployment.options(**...)``)."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.replica_cpus},
        }
        if self.autoscaling:
            config: dict[str, Any] = {
                "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "max_replicas": self.max_replicas if self.max_replicas is not None else max(self.replicas, 1),
                "initial_replicas": self.replicas,
            }
            if self.target_ongoing_requests is not None:
                config["target_ongoing_requests"] = self.target_ongoing_requests
            options["autoscaling_config"] = config
        else:
            options["num_replicas"] = self.replicas
        return options


__all__ = ["EngineSpec", "ScaleOutOptions"]
