"""
What surrounds the training loop: resumable checkpoints, the Ctrl-C protocol and the progress bar.

Split out of ``training.py`` (which re-exports ``STATE_NAME`` and ``TrainingInterrupted``).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
import time

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import TrainingError


if TYPE_CHECKING:
    import torch

    from .runtime import AdaptedModel
    from .training import TrainOptions


STATE_NAME = "trainer_state.pt"
"""The resumable part of a checkpoint directory (the adapter itself is in ``adapter/``)."""


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
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params, strict=True)):
        raise TrainingError(f"{path}: the checkpoint's tensors do not match this model's adapter.")
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
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
