"""Chat models that write and judge explanations: the `Chat` protocol and its two kinds.

`EndpointChat` talks to any OpenAI-compatible chat endpoint (llama.cpp's server, vLLM,
Ollama, OpenAI, `explorer serve`) through the official `openai` client, retrying with
exponential backoff on rate limits, server errors, timeouts and dropped connections.
`LocalChat` answers with the loaded model itself (its chat template, greedy decoding) through
explorer.steering's generation, which holds the model's lock, so it shares the model safely.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

from explorer.model import LoadedModel
from explorer.sae import SAE

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class ExplainerError(ValueError):
    """The explainer or judge cannot be used; the message says why and what to do."""


class Chat(Protocol):
    name: str  # the model's name, stored with every explanation it writes

    def complete(self, messages: list[Message], max_tokens: int) -> str:
        """The assistant's reply to `messages`."""


@dataclass(frozen=True)
class Backoff:
    retries: int = 4  # attempts after the first
    first_wait: float = 1.0  # seconds before the first retry; doubled for each further one
    max_wait: float = 30.0

    def wait(self, attempt: int) -> float:
        return min(self.first_wait * 2 ** attempt, self.max_wait)


class EndpointChat:
    """An OpenAI-compatible chat endpoint at `url` (e.g. http://localhost:8080/v1)."""

    def __init__(self, url: str, model: str, key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 backoff: Backoff = Backoff()):
        import openai

        if not url.startswith(("http://", "https://")):
            raise ExplainerError(f"--explainer-url {url!r} is not an http(s) URL. "
                                 "Fix: give the endpoint's base URL, e.g. http://localhost:8080/v1")
        # Local servers take any key; the client insists on one, so a placeholder stands in.
        key = os.environ.get(key_env) or "none"
        # max_retries=0: the retries are ours, so that their number and waits are the same everywhere.
        self.client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)
        self.name = model
        self.url = url
        self.backoff = backoff

    def complete(self, messages: list[Message], max_tokens: int) -> str:
        import openai

        for attempt in range(self.backoff.retries + 1):
            try:
                reply = self.client.chat.completions.create(model=self.name, messages=messages,
                                                            max_tokens=max_tokens, temperature=0.0)
                return reply.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                problem = err  # APITimeoutError is an APIConnectionError
            except openai.APIStatusError as err:
                if err.status_code < 500:
                    raise ExplainerError(f"The explainer at {self.url} refused the request ({err.status_code}: "
                                         f"{_short(err.message)}). Fix: check --explainer-model and the API key "
                                         "variable (--explainer-key-env)") from None
                problem = err
            if attempt < self.backoff.retries:
                wait = self.backoff.wait(attempt)
                log.warning("explainer call failed (%s); retrying in %.1f s", _short(str(problem)), wait)
                time.sleep(wait)
        raise ExplainerError(f"The explainer at {self.url} failed {self.backoff.retries + 1} times "
                             f"({_short(str(problem))}). Fix: check that the server is running and reachable")


def _short(text: str, n: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= n else line[: n - 3] + "..."


class LocalChat:
    """The loaded model as the chat model: greedy, through the steering generation (no edits)."""

    def __init__(self, lm: LoadedModel, sae: SAE):
        if not getattr(lm.tokenizer, "chat_template", None):
            raise ExplainerError(f"The model {lm.name!r} has no chat template, so it cannot explain features. "
                                 "Fix: load an instruct model, or pass --explainer-url of a chat endpoint")
        self.lm, self.sae = lm, sae
        self.name = lm.name

    def complete(self, messages: list[Message], max_tokens: int) -> str:
        from explorer.steering import GenerationSettings, generate_rows

        # The steering path takes one user message; a system message goes in front of it.
        text = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
        settings = GenerationSettings(max_new_tokens=max_tokens, chat=True)
        (out,) = generate_rows(self.lm, self.sae, text, [[]], settings)
        return out.text
