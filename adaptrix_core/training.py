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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import TrainingError


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .runtime import AdaptedModel


STATE_NAME = "trainer_state.pt"
"""The resumable part of a checkpoint directory (the adapter itself is in ``adapter/``)."""

_ROLES_OK = ("system", "user", "assistant")


class TrainingInterrupted(TrainingError):
    """Training stopped on Ctrl-C; a resumable checkpoint was written (``checkpoint``, ``step``)."""

    def __init__(self, checkpoint: Path, step: int, total: int) -> None:
        super().__init__(
            f"training interrupted after step {step}/{total}; checkpoint saved to {checkpoint}. "
            f"Fix: run the same command with --resume {checkpoint} to continue."
        )
        self.checkpoint = checkpoint
        self.step = step
        self.total = total


# dataset ----------------------------------------------------------------------------


@attrs.frozen
class Example:
    """One training example: the context messages, the response to learn, and where it came from."""

    messages: tuple[Mapping[str, str], ...]
    response: str
    source: str = ""
    """``file:line``, for error messages."""

    @property
    def prompt(self) -> str:
        """The last user message (what an evaluation asks)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def _bad(where: str, field: str, problem: str) -> TrainingError:
    return TrainingError(
        f"{where}: field {field!r} {problem}. Each line must be a JSON object with \"prompt\" and \"response\" "
        "strings, or \"messages\": a list of {\"role\", \"content\"} ending with the assistant's message."
    )


def parse_example(data: Any, where: str) -> Example:
    """
    Validate one decoded dataset line.

    Raises:
        TrainingError: Naming *where* (``file:line``) and the field that is wrong.
    """
    if not isinstance(data, dict):
        raise _bad(where, "<line>", f"must be a JSON object, not {type(data).__name__}")
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise _bad(where, "messages", "must be a list of at least two messages")
        parsed = []
        for i, message in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(message, dict):
                raise _bad(where, field, "must be an object with \"role\" and \"content\"")
            role, content = message.get("role"), message.get("content")
            if role not in _ROLES_OK:
                raise _bad(where, f"{field}.role", f"is {role!r}; expected one of {', '.join(_ROLES_OK)}")
            if not isinstance(content, str) or (role == "assistant" and not content.strip()):
                raise _bad(where, f"{field}.content", "must be a non-empty string")
            parsed.append({"role": role, "content": content})
        if parsed[-1]["role"] != "assistant":
            raise _bad(where, f"messages[{len(parsed) - 1}].role", "must be 'assistant' (the response to learn)")
        if not any(m["role"] == "user" for m in parsed[:-1]):
            raise _bad(where, "messages", "needs a user message before the assistant's")
        return Example(tuple(parsed[:-1]), parsed[-1]["content"], where)
    for field in ("prompt", "response"):
        if field not in data:
            raise _bad(where, field, "is missing")
        if not isinstance(data[field], str) or not data[field].strip():
            raise _bad(where, field, "must be a non-empty string")
    return Example(({"role": "user", "content": data["prompt"]},), data["response"], where)


def read_dataset(path: str | os.PathLike[str]) -> list[Example]:
    """
    Read a JSONL dataset; blank lines are skipped.

    Raises:
        TrainingError: The file is missing or empty, or a line is not valid (the message names ``file:line``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainingError(f"{path}: dataset file not found. Fix: pass a JSONL file of examples.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path}: cannot read the dataset ({e}).") from None
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
        examples.append(parse_example(data, where))
    if not examples:
        raise TrainingError(f"{path}: the dataset has no examples.")
    return examples


def dataset_sha256(examples: Sequence[Example]) -> str:
    """A digest of the examples' content (not of file paths), so a checkpoint knows its data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([list(map(dict, example.messages)), example.response], sort_keys=True).encode())
    return digest.hexdigest()


# encoding ---------------------------------------------------------------------------


@attrs.frozen
class Encoded:
    """Token ids of one example; ``ids[start:]`` are the response tokens (the only ones with loss)."""

    ids: tuple[int, ...]
    start: int


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(example: Example, tokenizer: Any, max_length: int) -> Encoded:
    """
    Tokenize *example* the way it will be prompted at inference time.

    With a chat template: the prompt is the template up to the assistant's
    turn, the response is what the template adds for the assistant's message
    (its end-of-turn token included, so the adapter learns to stop). Without
    one: ``prompt + "\\n"`` then ``response`` + EOS. Responses longer than
    *max_length* are cut at the end.

    Raises:
        TrainingError: The prompt alone does not fit in *max_length* tokens.
    """
    messages = [dict(m) for m in example.messages]
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": example.response}], tokenize=False
        )
        prompt = _tokens(tokenizer, prompt_text)
        full = _tokens(tokenizer, full_text)
        if full[: len(prompt)] != prompt:  # the template re-tokenizes across the boundary: append instead
            full = prompt + _tokens(tokenizer, full_text[len(prompt_text) :])
    else:
        prompt = _tokens(tokenizer, "\n".join(m["content"] for m in messages) + "\n")
        eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
        full = prompt + _tokens(tokenizer, example.response) + eos
    if len(prompt) >= max_length:
        raise TrainingError(
            f"{example.source}: the prompt is {len(prompt)} tokens, longer than max_length={max_length}. "
            "Fix: raise --max-length or shorten the prompt."
        )
    if len(full) <= len(prompt):
        raise TrainingError(f"{example.source}: field 'response' encodes to no tokens.")
    return Encoded(tuple(full[:max_length]), len(prompt))


# options and results -----------------------------------------------------------------


def _roles(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [r.strip() for r in value.split(",") if r.strip()]
    return tuple(value)


@attrs.frozen
class TrainOptions:
    """
    What to train and how. Everything that changes the result is here (a checkpoint checks it on resume).

    Attributes:
        r: LoRA rank.
        alpha: ``lora_alpha`` (scaling ``alpha / r``).
        roles: Canonical module roles to adapt (``adaptrix_core.ROLES``).
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
    roles: tuple[str, ...] = attrs.field(default=("attn.q", "attn.v"), converter=_roles)
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

    from .exceptions import AdaptrixError
    from .runtime import LoraSpec

    options = options or TrainOptions()
    if not examples:
        raise TrainingError("the dataset has no examples.")
    encoded = [encode_example(e, tokenizer, options.max_length) for e in examples]
    total = options.total_steps(len(encoded))
    steps = schedule(len(encoded), options, total)
    sha = dataset_sha256(examples)
    pad_id = next(
        (int(t) for t in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)) if t is not None),
        0,
    )
    try:
        am.add_adapter(
            name, LoraSpec(r=options.r, alpha=options.alpha, roles=options.roles, layers=options.layers), seed=options.seed
        )
    except AdaptrixError as e:
        raise TrainingError(f"cannot create adapter {name!r} with {options.roles} on layers {options.layers!r}: {e}") from None
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
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    model = am.model
    was_training = model.training
    model.eval()  # no dropout: the run is deterministic; gradients still flow into the adapter
    stop = _StopFlag()
    started = time.perf_counter()
    bar = _Bar(progress, name, total, start_step)
    step = start_step
    try:
        with stop, bar, am.using(name):  # only this adapter is active while it learns
            for step in range(start_step, total):
                for group in optimizer.param_groups:
                    group["lr"] = options.lr_at(step, total)
                loss, n = response_loss(model, [encoded[i] for i in steps[step]], pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if options.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                tokens += n
                bar.update(step + 1, losses[-1], tokens / max(1e-9, time.perf_counter() - started))
                if on_step is not None:
                    on_step(step + 1, losses[-1])
                if stop.requested:
                    raise KeyboardInterrupt
            step = total
    except KeyboardInterrupt:
        if stop.aborted:
            am.unload_adapter(name)
            raise
        done = len(losses)
        where = _save_checkpoint(am, name, ckpt, params, optimizer, options, sha, losses, tokens, total)
        am.unload_adapter(name)
        raise TrainingInterrupted(where, done, total) from None
    except BaseException:
        am.unload_adapter(name)
        raise
    finally:
        model.train(was_training)
    for tensor in params:
        tensor.requires_grad_(False)
    return TrainResult(
        name=name, steps=total, losses=tuple(losses), seconds=time.perf_counter() - started, tokens=tokens,
        examples=len(examples), options=options, dataset_sha256=sha, resumed_from=start_step,
    )


# checkpoints ------------------------------------------------------------------------


def _save_checkpoint(
    am: AdaptedModel, name: str, directory: Path | None, params: list[torch.Tensor], optimizer: Any,
    options: TrainOptions, sha: str, losses: list[float], tokens: int, total: int,
) -> Path:
    """Write ``trainer_state.pt`` + the adapter so far (PEFT format) atomically; return the directory."""
    import torch

    from .peft_format import replace_dir

    if directory is None:
        directory = Path(tempfile.gettempdir()) / f"adaptrix-train-{name}-checkpoint"
    directory = directory.expanduser().resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        state = {
            "format": 1,
            "name": name,
            "step": len(losses),
            "total": total,
            "options": options.to_dict(),
            "dataset_sha256": sha,
            "params": [p.detach().cpu().clone() for p in params],
            "optimizer": optimizer.state_dict(),
            "losses": list(losses),
            "tokens": tokens,
        }
        torch.save(state, tmp / STATE_NAME)
        am.save_adapter(name, tmp / "adapter")
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _load_checkpoint(
    directory: Path, params: list[torch.Tensor], optimizer: Any, options: TrainOptions, sha: str, total: int
) -> tuple[int, list[float], int]:
    import torch

    path = directory / STATE_NAME
    if not path.is_file():
        raise TrainingError(f"{directory}: not a training checkpoint (no {STATE_NAME}). Fix: pass the directory "
                            "that the interrupted run printed.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: never show torch's own advice
        raise TrainingError(f"{path}: unreadable checkpoint ({type(e).__name__}).") from None
    required = ("options", "dataset_sha256", "params", "optimizer", "step", "losses", "tokens")
    if not isinstance(state, dict) or any(k not in state for k in required):
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        raise TrainingError(f"{path}: not an Adaptrix training checkpoint (missing field(s) {', '.join(missing)}).")
    if state.get("options") != options.to_dict():
        diff = sorted(k for k, v in options.to_dict().items() if state.get("options", {}).get(k) != v)
        raise TrainingError(
            f"{path}: the checkpoint was made with different options ({', '.join(diff)}). Fix: resume with the "
            "same command line as the interrupted run."
        )
    if state.get("dataset_sha256") != sha:
        raise TrainingError(f"{path}: the checkpoint was made on a different dataset. Fix: resume with the same file.")
    saved = state["params"]
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params)):
        raise TrainingError(f"{path}: the checkpoint's tensors do not match this model's adapter.")
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s.to(device=p.device, dtype=p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    if state["step"] >= total:
        raise TrainingError(f"{path}: the checkpoint is already at step {state['step']} of {total}; nothing to resume.")
    return int(state["step"]), [float(x) for x in state["losses"]], int(state["tokens"])


# interrupts and progress ----------------------------------------------------------------


class _StopFlag:
    """
    First Ctrl-C: finish the current step, then checkpoint (never a half-updated adapter).
    Second Ctrl-C: stop at once (the usual KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.requested = False
        self.aborted = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.aborted = True  # mid-step: the adapter may be half-updated, so nothing is checkpointed
            raise KeyboardInterrupt
        self.requested = True
        print("\nadaptrix: stopping after this step and saving a checkpoint (Ctrl-C again to abort now)",
              file=sys.stderr)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Bar:
    """A rich progress bar on stderr (step, loss, tokens/s); plain log lines when stderr is not a terminal."""

    def __init__(self, enabled: bool, name: str, total: int, start: int) -> None:
        self.enabled = enabled
        self.name = name
        self.total = total
        self.start = start
        self._progress: Any = None
        self._task: Any = None
        self._plain = False
        self._every = max(1, total // 20)
        self._t0 = time.perf_counter()

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            self._plain = True
            return self
        self._progress = Progress(
            TextColumn(f"training {self.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total, completed=self.start, loss="-", speed="")
        return self

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._plain:
            if step % self._every == 0 or step == self.total:
                elapsed = time.perf_counter() - self._t0
                print(f"training {self.name}: step {step}/{self.total} loss {loss:.4f} "
                      f"{tokens_per_s:.0f} response tok/s {elapsed:.0f}s", file=sys.stderr, flush=True)
            return
        self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_s:.0f} tok/s")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
