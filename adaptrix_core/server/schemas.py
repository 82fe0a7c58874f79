"""Request bodies, validated by pydantic into precise 400s (``param`` names the field)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _unicode_text(value: str) -> str:
    """
    Refuse lone UTF-16 surrogates (JSON ``"\\ud800"``): they are not Unicode text, no tokenizer can take
    them, and echoing them back would fail to encode. The message names the position, never the character.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        msg = (f"contains a lone UTF-16 surrogate (U+{ord(value[e.start]):04X}) at character {e.start}; "
               "send valid Unicode text (a surrogate pair must encode one character)")
        raise ValueError(msg) from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
"""A string that is valid Unicode text (what every text field a tokenizer or a response sees must be)."""


class _Body(BaseModel):
    """OpenAI clients send fields we do not use (``user``, ``logit_bias``...): accept and ignore them."""

    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingBody(_Body):
    """The fields chat and completion requests share: which adapters, how to sample, how to deliver."""

    model: Text = Field(min_length=1, max_length=1024)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = Field(None)
    seed: int | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens even past end-of-sequence.")
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=10.0, description="vLLM's extension: > 1 discourages repeating tokens already in the text.",
    )

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingBody):
    prompt: Text | list[Text]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False


class LoadAdapterRequest(_Body):
    pin: bool = False
