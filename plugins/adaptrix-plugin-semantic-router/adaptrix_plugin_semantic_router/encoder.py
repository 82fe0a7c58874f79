"""
The sentence encoder behind the semantic router (imports torch; loaded on first use).

Loading is plain transformers (``AutoTokenizer`` + ``AutoModel`` on the model
folder); embeddings are mean-pooled token states, L2-normalised, exactly as
sentence-transformers computes all-MiniLM-L6-v2's. Routing one short query must
take milliseconds on a CPU, so for BERT-family models (MiniLM is one) the
forward pass runs through :class:`FastBert`: the same modules and weights, with
Q, K and V fused into one matmul and none of the generic masking machinery a
single unpadded sequence does not need. Its float32 output equals
``BertModel``'s (tested). The Linear layers are then dynamically quantized to
int8, and one query runs on one intra-op thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import warnings

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from torch import nn

from . import EmbeddingModelMissingError


_CLAUSE = re.compile(r"[^,:;!?.]+")
_PROBES = ("Hello there.", "How do I say 'where is the train station, please?' in French, politely?")


class FastBert(nn.Module):
    """
    A BERT encoder forward for one unpadded sequence, over an existing ``BertModel``'s modules.

    Why: the generic forward builds attention masks and dispatch structures
    that cost more than the matmuls for a 15-token query. Dropout is off
    (inference only); the attention scale is the standard ``1/sqrt(head_dim)``.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.embeddings = bert.embeddings
        self.heads = int(bert.config.num_attention_heads)
        self.layers = nn.ModuleList()
        for layer in bert.encoder.layer:
            attn = layer.attention.self
            qkv = nn.Linear(attn.query.in_features, 3 * attn.query.out_features)
            with torch.no_grad():
                qkv.weight.copy_(torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]))
                qkv.bias.copy_(torch.cat([attn.query.bias, attn.key.bias, attn.value.bias]))
            self.layers.append(
                nn.ModuleDict(
                    {
                        "qkv": qkv,
                        "attn_out": layer.attention.output.dense,
                        "attn_norm": layer.attention.output.LayerNorm,
                        "up": layer.intermediate.dense,
                        "down": layer.output.dense,
                        "out_norm": layer.output.LayerNorm,
                    }
                )
            )
        self.act = _activation(bert.config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, T) token ids -> (1, T, hidden) last hidden states."""
        hidden = self.embeddings(input_ids=input_ids)
        batch, length, width = hidden.shape
        for layer in self.layers:
            qkv = layer["qkv"](hidden).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
            hidden = layer["attn_norm"](layer["attn_out"](attended) + hidden)
            hidden = layer["out_norm"](layer["down"](self.act(layer["up"](hidden))) + hidden)
        return hidden


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bar on stdout: `adaptrix route` output is the decision, not our load."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _activation(config: Any) -> Any:
    act = getattr(config, "hidden_act", "gelu")
    if act == "gelu":
        return nn.functional.gelu
    if act == "relu":
        return nn.functional.relu
    raise ValueError(f"unsupported hidden_act {act!r}")


def _is_bert(model: nn.Module) -> bool:
    try:
        layer = model.encoder.layer[0]
        return (
            getattr(model.config, "model_type", "") == "bert"
            and hasattr(layer.attention.self, "query")
            and getattr(model.config, "hidden_act", "gelu") in ("gelu", "relu")
            and getattr(model.config, "position_embedding_type", "absolute") == "absolute"
        )
    except (AttributeError, IndexError, TypeError):
        return False


class _HFForward(nn.Module):
    """Any other AutoModel: its own forward, last hidden states."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state


class _Int8Linear(nn.Module):
    """
    A dynamically quantized Linear that calls the int8 kernel directly.

    Same kernel and arguments as ``torch.ao``'s ``DynamicQuantizedLinear``
    (so the same output), minus its Python dispatch, which costs as much as
    the matmul itself for a 15-token query.
    """

    def __init__(self, quantized: nn.Module) -> None:
        super().__init__()
        self.packed = quantized._packed_params._packed_params
        self.op = torch.ops.quantized.linear_dynamic.default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.packed, True)


def _direct_int8(module: nn.Module) -> nn.Module:
    """Swap every ``DynamicQuantizedLinear`` in *module* for an :class:`_Int8Linear`."""
    for name, child in module.named_children():
        if type(child).__name__ == "DynamicQuantizedLinear" and child._packed_params.dtype == torch.qint8:
            setattr(module, name, _Int8Linear(child))
        else:
            _direct_int8(child)
    return module


def quantize_dynamic_int8(module: nn.Module) -> nn.Module:
    """
    Dynamic int8 quantization of the Linear layers (per-channel int8 weights, activations quantized per call).

    A short query's forward is bound by reading the weights; int8 weights (VNNI
    kernels) make it about 1.5-2x faster on a CPU and move cosine scores by
    about 0.01. The API is deprecated in favour of torchao but present in the
    pinned torch; where it is missing we stay in float32.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            quantized = quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        return _direct_int8(quantized) if isinstance(module, FastBert) else quantized
    except (ImportError, AttributeError, RuntimeError, NotImplementedError, AssertionError):
        return module


def trace(forward: nn.Module, probes: Sequence[torch.Tensor]) -> nn.Module:
    """
    TorchScript-trace *forward* so a query's ~100 small ops skip Python dispatch (about 2x faster here).

    The trace is checked against the eager module on *probes* of different
    lengths (sequence length stays dynamic); if tracing fails or disagrees, the
    eager module is kept.
    """
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(forward, probes[0], check_trace=False)
            for ids in probes:
                if not torch.allclose(traced(ids), forward(ids), atol=1e-5):
                    return forward
    except Exception:  # TorchScript missing or unable to trace: eager is correct, only slower
        return forward
    return traced


_FORWARD_LOCK = threading.Lock()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """
    Run one forward with *n* intra-op threads, then restore the process setting.

    A 20-token forward is too small to gain from threads, and on a busy CPU
    spinning OpenMP workers make it many times slower. Forwards are serialised
    so two routers' save/restore cannot interleave.
    """
    with _FORWARD_LOCK:
        old = torch.get_num_threads()
        if n is None or n == old:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)


class Encoder:
    """A sentence encoder: mean-pooled, L2-normalised token states of a transformers model."""

    def __init__(self, path: Path, *, max_length: int = 64, quantize: bool = True, threads: int | None = 1) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmbeddingModelMissingError(
                f"semantic router: model folder {path} has no config.json. "
                "Fix: pass model_dir= a sentence-embedding model folder (config.json, tokenizer, weights)."
            )
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.max_length = max_length
        self.threads = threads
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        with _quiet_transformers():
            model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.dim = int(model.config.hidden_size)
        self.fast = _is_bert(model)
        forward: nn.Module = FastBert(model) if self.fast else _HFForward(model)
        self.quantized = quantize
        forward = (quantize_dynamic_int8(forward) if quantize else forward).eval()
        if self.fast:
            probes = [self.tokenizer([t], return_tensors="pt")["input_ids"] for t in _PROBES]
            with torch_threads(threads):
                forward = trace(forward, probes)
        self.forward = forward
        self.identity = ":".join(
            [path.name, str(model.config.model_type), str(self.dim), "int8" if quantize else "fp32", _fingerprint(path)]
        )

    def _hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids)[0]

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Return (len(texts), dim) unit vectors; each text runs alone, exactly like a query."""
        rows = []
        with torch.inference_mode(), torch_threads(self.threads):
            for text in texts:
                ids = self.tokenizer([text], truncation=True, max_length=256, return_tensors="pt")["input_ids"]
                rows.append(self._hidden(ids).mean(0))
            return nn.functional.normalize(torch.stack(rows), dim=-1)

    def embed_views(self, query: str) -> tuple[torch.Tensor, list[str]]:
        """
        Embed *query* once; return the whole query's vector plus one per clause, and their texts.

        The clause vectors are mean-pooled from the same forward pass over the
        tokens whose characters fall inside that clause, so they cost nothing extra.
        """
        with torch.inference_mode(), torch_threads(self.threads):
            batch = self.tokenizer(
                [query], truncation=True, max_length=self.max_length, return_tensors="pt", return_offsets_mapping=True
            )
            offsets = batch["offset_mapping"][0].tolist()
            hidden = self._hidden(batch["input_ids"])
            real = [i for i, (start, end) in enumerate(offsets) if end > start]
            views = [hidden.mean(0)]
            labels = [query]
            clauses = [(m.start(), m.end(), m.group().strip()) for m in _CLAUSE.finditer(query) if m.group().strip()]
            if len(clauses) > 1:
                for start, end, text in clauses:
                    inside = [i for i in real if offsets[i][0] >= start and offsets[i][1] <= end]
                    if inside:
                        views.append(hidden[inside].mean(0))
                        labels.append(text)
            return nn.functional.normalize(torch.stack(views), dim=-1), labels


def _fingerprint(path: Path) -> str:
    """Cheap identity of a model folder: its files' names and sizes."""
    parts = sorted(f"{p.name}:{p.stat().st_size}" for p in path.iterdir() if p.is_file())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


_ENCODERS: dict[tuple[str, int, bool, int | None], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(path: Path, *, max_length: int = 64, quantize: bool = True, threads: int | None = 1) -> Encoder:
    """A process-wide shared encoder per model folder and settings (loading takes a second or two)."""
    key = (str(path), max_length, quantize, threads)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = _ENCODERS[key] = Encoder(path, max_length=max_length, quantize=quantize, threads=threads)
    return encoder
