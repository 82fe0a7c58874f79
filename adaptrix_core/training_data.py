"""
Training data: read and check a JSONL dataset, fingerprint it, and encode examples into token ids.

Split out of ``training.py`` (which re-exports every public name here). The format is described there.
"""

from __future__ import annotations

import hashlib
import json
import os

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .exceptions import TrainingError


_ROLES_OK = ("system", "user", "assistant")



# dataset ----------------------------------------------------------------------------


@attrs.frozen
class Example:
    """One training example: the context messages, the response to learn, and where it came from."""

    messages: tuple[Mapping[str, str], ...]
    response: str
    source: str = ""
    """``file:line``, for error messages."""
    accept: tuple[str, ...] = ()
    """Other answers an evaluation counts as right (a translation has more than one); training ignores them."""

    @property
    def prompt(self) -> str:
        """The last user message (what an evaluation asks)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def _bad(where: str, field: str, problem: str) -> TrainingError:
    return TrainingError(
        f"{where}: field {field!r} {problem}. Each line must be a JSON object with \"prompt\" and \"response\" "
        "strings, or \"messages\": a list of {\"role\", \"content\"} ending with the assistant's message."
    )


def _accept(data: dict[str, Any], where: str) -> tuple[str, ...]:
    accept = data.get("accept", [])
    if not isinstance(accept, list) or not all(isinstance(a, str) and a.strip() for a in accept):
        raise _bad(where, "accept", "must be a list of non-empty strings (other right answers)")
    return tuple(accept)


def parse_example(data: Any, where: str) -> Example:
    """
    Validate one decoded dataset line (an optional ``"accept"`` list names other right answers).

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
        return Example(tuple(parsed[:-1]), parsed[-1]["content"], where, _accept(data, where))
    for field in ("prompt", "response"):
        if field not in data:
            raise _bad(where, field, "is missing")
        if not isinstance(data[field], str) or not data[field].strip():
            raise _bad(where, field, "must be a non-empty string")
    return Example(({"role": "user", "content": data["prompt"]},), data["response"], where, _accept(data, where))


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
