"""The OpenAI API's shapes as `explorer serve` speaks them: request bodies,
error objects, response and stream-chunk objects, and the text of one
generated row as it grows (incremental decoding and stop sequences).

Only what the endpoint honours is declared; a request that asks for something
it cannot do (logprobs, tools, best_of ...) gets a 400 error object naming the
parameter rather than a silently different answer. Fields that change nothing
here (user, presence/frequency penalties left at 0, ...) are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 8  # rows of one request
MAX_STOP = 4  # stop sequences, as the OpenAI API allows
# Parameters a client may send that this server cannot honour, with the value that means "not used".
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "best_of": (None, 1), "echo": (None, False),
               "suffix": (None, ""), "tools": (None, []), "functions": (None, []), "logit_bias": (None, {}),
               "response_format": (None, {"type": "text"}), "presence_penalty": (None, 0, 0.0),
               "frequency_penalty": (None, 0, 0.0)}


class ApiError(Exception):
    """An error the client caused (or a busy server); becomes OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields: see `check_unsupported`

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ApiError(400, f"stop takes 1 to {MAX_STOP} non-empty strings; got {len(stops)}", param="stop")
        return stops

    def check_unsupported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED and value not in UNSUPPORTED[name]:
                raise ApiError(400, f"{name}={value!r} is not supported by this server. Fix: leave {name} out",
                               param=name, code="unsupported_parameter")


class CompletionRequest(_Common):
    prompt: str | list[str]

    def text(self) -> str:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1 or not isinstance(prompts[0], str):
            raise ApiError(400, f"prompt must be one string (or a list of one); got {len(prompts)}. "
                                "Fix: send one request per prompt", param="prompt")
        if not prompts[0].strip():
            raise ApiError(400, "prompt is empty. Fix: send some text", param="prompt")
        return prompts[0]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:  # the array form: only text parts
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"message content part of type {part.get('type')!r} is not supported. "
                                    "Fix: send text only", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)

    def conversation(self) -> list[dict]:
        # 'developer' is the newer name of 'system'; chat templates know only the latter
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(rid: str, model: str, texts: list[str], reasons: list[str], use: dict) -> dict:
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def chat_object(rid: str, model: str, texts: list[str], reasons: list[str], use: dict) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r}
               for i, (t, r) in enumerate(zip(texts, reasons))]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def chunk(rid: str, model: str, chat: bool, row: int, text: str | None, reason: str | None,
          first: bool = False) -> dict:
    """One streamed piece of one row: new text, or its finish reason."""
    if chat:
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        choice = {"index": row, "delta": delta, "logprobs": None, "finish_reason": reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": row, "text": text or "", "logprobs": None, "finish_reason": reason}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(rid: str, model: str, chat: bool, use: dict) -> dict:
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [], "usage": use}


class RowText:
    """The text of one generated row as its tokens arrive.

    `add` returns the text that is safe to send now: a character split over two
    tokens waits for its second half, and text that might begin a stop sequence
    waits until it cannot. Once a stop sequence appears, the text ends before it."""

    def __init__(self, tokenizer, stops: list[str], eos: int | None):
        self.tokenizer, self.stops, self.eos = tokenizer, stops, eos
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already returned
        self.text = ""
        self.stopped = False  # a stop sequence or EOS ended it

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        if token == self.eos:
            self.stopped = True
            return self.flush()
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self.flush()
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes to U+FFFD
        for s in self.stops:  # hold back a tail that is the start of a stop sequence
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - k:safe] == s[:k]:
                    safe -= k
                    break
        return self._upto(safe)

    def flush(self) -> str:
        """The rest of the text (the row has ended)."""
        return self._upto(len(self.text))

    def _upto(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out
