"""
LoRA training with Adaptrix's own injection: a JSONL dataset in, a PEFT adapter out.

The adapter is created with :meth:`AdaptedModel.add_adapter` (so targets,
rank, alpha and layer bands mean exactly what they mean at load time), only
its ``A``/``B`` tensors are trained, and the loss covers the response tokens
only. A run is a pure function of (base model, dataset, options): the data
order comes from the seed, the adapter's initialisation too, and a run that
is interrupted and resumed from its checkpoint ends with the same weights as
one that never stopped.

Dataset lines (JSONL, one example per line)::

    {"prompt": "How do I boil an egg?", "response": "Arr, matey! ..."}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

With ``messages`` the last message must be the assistant's: it is the
response; everything before it is context (no loss).

Reading and encoding the data lives in ``training_data.py``; checkpoints, Ctrl-C and the progress bar in
``training_session.py``. Every name stays importable from here.
"""

from __future__ import annotations

import math
import os
import random
import time

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import TrainingError
from .training_data import Encoded, Example, dataset_sha256, encode_example, parse_example, read_dataset
from .training_session import STATE_NAME, TrainingInterrupted, _Bar, _load_checkpoint, _save_checkpoint, _StopFlag


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .runtime import AdaptedModel


__all__ = [
    "STATE_NAME",
    "Encoded",
    "Example",
    "TrainOptions",
    "TrainResult",
    "TrainingInterrupted",
    "dataset_sha256",
    "encode_example",
    "parse_example",
    "read_dataset",
    "response_loss",
    "schedule",
    "step_warnings",
    "train_adapter",
]


# options and results -----------------------------------------------------------------


def _roles(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [] if value.strip() == "auto" else [r.strip() for r in value.split(",") if r.strip()]
    return tuple(value)


@attrs.frozen
class TrainOptions:
    """
    What to train and how. Everything that changes the result is here (a checkpoint checks it on resume).

    Attributes:
        r: LoRA rank.
        alpha: ``lora_alpha`` (scaling ``alpha / r``).
        roles: Canonical module roles to adapt (``adaptrix_core.ROLES``); empty or ``"auto"``: the model's
            default (``attn.q`` + ``attn.v``, or ``attn.qkv`` where they are fused).
        layers: ``"middle"``, ``"all"``, ``"4-8"``, ``"1,3,5"`` (see ``runtime.LayerSpec``).
        lr: Peak AdamW learning rate (linear warm-up, then cosine decay to 10 %).
        steps: Optimizer steps; 0 means ``epochs`` passes over the data.
        epochs: Passes over the data when ``steps`` is 0.
        batch_size: Examples per step.
        max_length: Tokens per example (prompt + response).
        warmup: Warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: Gradient-norm clip (0 = off).
        seed: Seeds the adapter's initialisation and the data order.
    """

    r: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    alpha: float = 16.0
    roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)
    layers: str = "middle"
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0.0))
    steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    epochs: float = attrs.field(default=3.0, validator=attrs.validators.gt(0.0))
    batch_size: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    max_length: int = attrs.field(default=256, validator=attrs.validators.gt(1))
    warmup: int = attrs.field(default=10, validator=attrs.validators.ge(0))
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps for a dataset of *n_examples*."""
        if self.steps:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of (0-based) *step*: linear warm-up, then cosine from ``lr`` down to ``lr / 10``."""
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, total - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["roles"] = list(self.roles)
        return data


@attrs.frozen
class TrainResult:
    """What a finished run did."""

    name: str
    steps: int
    losses: tuple[float, ...]
    seconds: float
    tokens: int
    examples: int
    options: TrainOptions
    dataset_sha256: str
    resumed_from: int = 0

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 10 % of steps (at least one): less noisy than the very last step."""
        tail = max(1, len(self.losses) // 10)
        return sum(self.losses[-tail:]) / tail

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "examples": self.examples,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 1),
            "first_loss": round(self.first_loss, 4),
            "final_loss": round(self.final_loss, 4),
            "dataset_sha256": self.dataset_sha256,
            "options": self.options.to_dict(),
            "resumed_from_step": self.resumed_from,
        }


# advice -------------------------------------------------------------------------------

MIN_VISIBLE_STEPS = 40
"""Fewest optimizer steps after which a shipped adapter showed its effect (pirate, json: 40; adapters/README.md)."""

MAX_REPEATS = 30
"""Passes over the data above which a small set is memorised rather than generalised (answers start to loop)."""


def step_warnings(n_examples: int, options: TrainOptions) -> list[str]:
    """
    What is likely wrong with a run's length, before any model is loaded (``adaptrix train`` prints these).

    Based on the recorded runs of the shipped adapters (adapters/README.md): a style (pirate, json) showed at
    40 steps of batch 8 over 224-300 examples; new content needed 100 (arithmetic) to 300 (french; 80 steps
    gave 25 % held-out, 300 gave 81 %). 20 steps on 30 examples taught nothing visible.
    """
    total = options.total_steps(n_examples)
    repeats = total * options.batch_size / max(1, n_examples)
    advice = []
    if total < MIN_VISIBLE_STEPS:
        advice.append(
            f"{total} steps is fewer than the {MIN_VISIBLE_STEPS} the shipped style adapters (pirate, json) needed "
            "before their effect showed; teaching new content took 100-300 (arithmetic, french). "
            f"Fix: --steps {MIN_VISIBLE_STEPS} or more."
        )
    if options.warmup * 2 >= total:
        advice.append(
            f"the warm-up ({options.warmup} steps) is half or more of the run ({total} steps): the learning rate "
            "is near its peak only briefly. Fix: more --steps, or a smaller --warmup."
        )
    if repeats > MAX_REPEATS:
        advice.append(
            f"each of the {n_examples} examples is seen about {repeats:.0f} times: a small set gets memorised and "
            "answers start to loop. Fix: add varied examples (100 or more) rather than steps."
        )
    return advice


# the loop ---------------------------------------------------------------------------


def schedule(n_examples: int, options: TrainOptions, total: int) -> list[list[int]]:
    """The example indices of every step: a fresh seeded shuffle per epoch, batches running across epochs."""
    order: list[int] = []
    epoch = 0
    while len(order) < total * options.batch_size:
        perm = list(range(n_examples))
        random.Random(options.seed * 1_000_003 + epoch).shuffle(perm)
        order.extend(perm)
        epoch += 1
    bs = options.batch_size
    return [order[i * bs : (i + 1) * bs] for i in range(total)]


def response_loss(model: nn.Module, batch: Sequence[Encoded], pad_id: int) -> tuple[torch.Tensor, int]:
    """
    Mean cross-entropy over the response tokens of *batch* (right-padded), and their count.

    The LM head runs only at the positions that predict a response token:
    the prompt's logits are never computed, which saves a large vocabulary
    projection per prompt token.
    """
    import torch

    device = next(model.parameters()).device
    length = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    predicts = torch.zeros((len(batch), length), dtype=torch.bool)  # position t predicts token t+1
    for row, example in enumerate(batch):
        ids[row, : len(example.ids)] = torch.tensor(example.ids)
        mask[row, : len(example.ids)] = 1
        predicts[row, example.start - 1 : len(example.ids) - 1] = True
    ids, mask, predicts = ids.to(device), mask.to(device), predicts.to(device)
    targets = torch.roll(ids, shifts=-1, dims=1)[predicts]
    hidden = _last_hidden(model, ids, mask)
    logits = model.get_output_embeddings()(hidden[predicts]).float()
    return torch.nn.functional.cross_entropy(logits, targets), int(targets.numel())


def _last_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model or model.get_output_embeddings() is None:
        raise TrainingError(
            f"{type(model).__name__} has no separate decoder and LM head; training needs a causal LM "
            "(…ForCausalLM / …LMHeadModel)."
        )
    return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


Callback = Callable[[int, float], None]


def train_adapter(
    am: AdaptedModel,
    tokenizer: Any,
    examples: Sequence[Example],
    name: str,
    options: TrainOptions | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_step: Callback | None = None,
) -> TrainResult:
    """
    Train a fresh LoRA adapter *name* on *examples*; it stays resident in *am* (no longer trainable).

    Args:
        am: The attached model (its base weights stay frozen).
        tokenizer: The base model's tokenizer (its chat template is used when it has one).
        examples: From :func:`read_dataset`.
        name: The adapter's name in *am*.
        options: Rank, targets, schedule and seed.
        checkpoint_dir: Where Ctrl-C writes a resumable checkpoint (default: a temp dir).
        resume: A checkpoint directory from an interrupted run with the same options and data.
        progress: Show a rich progress bar with the loss on stderr.
        on_step: Called after every step with ``(step, loss)`` (1-based step).

    Raises:
        TrainingError: Bad options, data that does not fit, or a checkpoint that does not match.
        TrainingInterrupted: Ctrl-C; the checkpoint path is in the exception.
    """
    import torch

    options = options or TrainOptions()
    if not examples:
        raise TrainingError("the dataset has no examples.")
    if not options.roles:  # resolved before anything records the options (results, checkpoints)
        options = attrs.evolve(options, roles=_model_default_roles(am))
    encoded = [encode_example(e, tokenizer, options.max_length) for e in examples]
    total = options.total_steps(len(encoded))
    sha = dataset_sha256(examples)
    _create_adapter(am, name, options)
    params = am.adapter_parameters(name)
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    losses: list[float] = []
    tokens = 0
    start_step = 0
    if resume is not None:
        try:
            start_step, losses, tokens = _load_checkpoint(Path(resume), params, optimizer, options, sha, total)
        except BaseException:
            am.unload_adapter(name)  # a refused resume leaves the model as it was
            raise
    run = _Run(am, name, options, params, optimizer, total, losses, tokens, started=time.perf_counter())
    try:
        run.loop(encoded, schedule(len(encoded), options, total), _pad_id(tokenizer), start_step, progress, on_step)
    except KeyboardInterrupt:
        if run.aborted:
            am.unload_adapter(name)
            raise
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        where = _save_checkpoint(am, name, ckpt, params, optimizer, options, sha, run.losses, run.tokens, total)
        am.unload_adapter(name)
        raise TrainingInterrupted(where, len(run.losses), total) from None
    except BaseException:
        am.unload_adapter(name)
        raise
    for tensor in params:
        tensor.requires_grad_(False)
    return TrainResult(
        name=name, steps=total, losses=tuple(run.losses), seconds=time.perf_counter() - run.started, tokens=run.tokens,
        examples=len(examples), options=options, dataset_sha256=sha, resumed_from=start_step,
    )


def _pad_id(tokenizer: Any) -> int:
    ids = (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
    return next((int(t) for t in ids if t is not None), 0)


def _model_default_roles(am: AdaptedModel) -> tuple[str, ...]:
    from .exceptions import AdaptrixError

    try:
        return am.default_roles()
    except AdaptrixError as e:
        raise TrainingError(str(e)) from None


def _create_adapter(am: AdaptedModel, name: str, options: TrainOptions) -> None:
    from .exceptions import AdaptrixError
    from .runtime import LoraSpec

    try:
        am.add_adapter(
            name, LoraSpec(r=options.r, alpha=options.alpha, roles=options.roles, layers=options.layers), seed=options.seed
        )
    except AdaptrixError as e:
        raise TrainingError(f"cannot create adapter {name!r} with {options.roles} on layers {options.layers!r}: {e}") from None


@attrs.define
class _Run:
    """One run's optimiser state and progress: what a Ctrl-C checkpoint saves."""

    am: AdaptedModel
    name: str
    options: TrainOptions
    params: list[torch.Tensor]
    optimizer: Any
    total: int
    losses: list[float]
    tokens: int
    started: float
    aborted: bool = False

    def loop(
        self, encoded: Sequence[Encoded], steps: list[list[int]], pad_id: int, start_step: int, progress: bool,
        on_step: Callback | None,
    ) -> None:
        """Run steps *start_step*..total with only this adapter active; Ctrl-C raises KeyboardInterrupt between steps."""
        model = self.am.model
        was_training = model.training
        model.eval()  # no dropout: the run is deterministic; gradients still flow into the adapter
        stop = _StopFlag()
        try:
            with stop, _Bar(progress, self.name, self.total, start_step) as bar, self.am.using(self.name):
                for step in range(start_step, self.total):
                    self._step(model, [encoded[i] for i in steps[step]], pad_id, step)
                    bar.update(step + 1, self.losses[-1], self.tokens / max(1e-9, time.perf_counter() - self.started))
                    if on_step is not None:
                        on_step(step + 1, self.losses[-1])
                    if stop.requested:
                        raise KeyboardInterrupt
        finally:
            self.aborted = stop.aborted
            model.train(was_training)

    def _step(self, model: nn.Module, batch: list[Encoded], pad_id: int, step: int) -> None:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.options.lr_at(step, self.total)
        loss, n = response_loss(model, batch, pad_id)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.options.grad_clip)
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        self.tokens += n
