"""`explorer serve`: an OpenAI-compatible HTTP endpoint over one loaded model and SAE.

`make_app` builds the FastAPI app: `/v1/models` lists the plain model and one
model per saved steering preset (`<model>:<preset>`), and `/v1/completions`
and `/v1/chat/completions` generate, streamed (server-sent events) or not,
with the named preset's interventions. Every request goes to the model's one
scheduler (`explorer.serve_engine`, `explorer.scheduler`), which batches them
with each other and with the app's sessions.
Errors are OpenAI's error objects: 400 for a bad request, 404 for an unknown
model, 429 when the engine's queue is full.

`serve` starts uvicorn, on localhost unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from explorer.activations import PromptError
from explorer.model import DEMO_NAME, LoadedModel
from explorer.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    RowText,
    _Common,
    chat_object,
    chunk,
    completion_object,
    new_id,
    usage,
    usage_chunk,
)
from explorer.presets import Preset
from explorer.sae import SAE
from explorer.serve_engine import Engine, Job, SchedulerBusy, default_engine
from explorer.settings import DEMO_MODEL
from explorer.steering import MAX_NEW_TOKENS, GenerationSettings, SteeringError

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 256}  # OpenAI's default for completions; chat replies need more
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def model_id(name: str) -> str:
    """The id the plain model is served under: the demo's own name, else the folder or file name."""
    if name == DEMO_MODEL:
        return DEMO_NAME
    return name.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf") or name


@dataclass(frozen=True)
class Served:
    """What one model id means: the plain model, or the model steered by a preset."""

    id: str
    preset: Preset | None = None


def served_models(lm: LoadedModel, presets: dict[str, Preset]) -> dict[str, Served]:
    base = model_id(lm.name)
    models = {base: Served(base)}
    for name, preset in sorted(presets.items()):
        models[f"{base}:{name}"] = Served(f"{base}:{name}", preset)
    return models


def make_app(lm: LoadedModel, sae: SAE, presets: dict[str, Preset] | None = None,
             max_acts: dict[int, float] | None = None, engine: Engine | None = None) -> FastAPI:
    """The endpoint over one model and SAE; `presets` by name, `max_acts` for their 'N x max' values."""
    models = served_models(lm, presets or {})
    engine = engine or default_engine(lm, sae)
    app = FastAPI(title="SAE Feature Explorer (OpenAI-compatible)", docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc) or None
        message = f"{where + ': ' if where else ''}{first.get('msg', 'invalid request body')}"
        return JSONResponse(ApiError(400, message, param=where).body(), status_code=400)

    @app.exception_handler(404)
    async def _not_found(request: Request, err):
        return JSONResponse(ApiError(404, f"No route {request.url.path}. Fix: use /v1/models, /v1/completions "
                                          "or /v1/chat/completions", code="not_found").body(), status_code=404)

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": m.id, "object": "model", "created": 0, "owned_by": "sae-explorer",
                 **({"steering": m.preset.describe()} if m.preset else {})} for m in models.values()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str):
        served = lookup(models, model)
        return {"id": served.id, "object": "model", "created": 0, "owned_by": "sae-explorer"}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        served = lookup(models, body.model)
        text = body.text()
        job = make_job(lm, served, body, text, chat=False, max_acts=max_acts)
        return await respond(engine, lm, served, body, job, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        served = lookup(models, body.model)
        text = chat_text(lm, body.conversation())
        job = make_job(lm, served, body, text, chat=True, max_acts=max_acts)
        return await respond(engine, lm, served, body, job, request, chat=True)

    return app


def lookup(models: dict[str, Served], name: str) -> Served:
    if name not in models:
        raise ApiError(404, f"The model {name!r} does not exist. Fix: use one of {', '.join(models)} "
                            "(GET /v1/models lists them)", param="model", code="model_not_found")
    return models[name]


def chat_text(lm: LoadedModel, messages: list[dict]) -> str:
    """The conversation through the tokenizer's chat template, ready for the assistant's reply."""
    if not getattr(lm.tokenizer, "chat_template", None):
        if len(messages) == 1 and messages[0]["role"] == "user":
            return messages[0]["content"]  # a base model: the one message is the prompt
        raise ApiError(400, "This model has no chat template, so it takes one user message only. "
                            "Fix: send one user message, or use /v1/completions", param="messages")
    try:
        return lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # noqa: BLE001 - templates raise anything (jinja errors, ValueError)
        raise ApiError(400, f"The chat template refused these messages: {err}", param="messages") from None


def make_job(lm: LoadedModel, served: Served, body: _Common, text: str, chat: bool,
             max_acts: dict[int, float] | None) -> Job:
    """The request as the engine takes it; the preset's settings fill what the request leaves out."""
    body.check_unsupported()
    stops = body.stops()
    defaults = dict(served.preset.settings) if served.preset else {}
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = asked or int(defaults.get("max_new_tokens", DEFAULT_MAX_TOKENS["chat" if chat else "completion"]))
    if max_tokens > MAX_NEW_TOKENS:
        raise ApiError(400, f"max_tokens={max_tokens} is above {MAX_NEW_TOKENS}. Fix: ask for fewer tokens",
                       param="max_tokens")
    temperature = body.temperature if body.temperature is not None else float(defaults.get("temperature", 1.0))
    top_p = body.top_p if body.top_p is not None else float(defaults.get("top_p", 1.0))
    seed = body.seed if body.seed is not None else int(defaults.get("seed", secrets.randbits(32)))
    try:
        settings = GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    except SteeringError as err:
        raise ApiError(400, str(err)) from None
    interventions = list(served.preset.interventions) if served.preset else []
    stop = served.preset.stop if served.preset else None
    return Job(text=text, chat=chat, rows=[interventions] * body.n, settings=settings,
               stops=[stop] * body.n, stop_texts=stops, max_acts=max_acts)


async def respond(engine: Engine, lm: LoadedModel, served: Served, body: _Common, job: Job,
                  request: Request, chat: bool):
    try:
        ticket = engine.submit(job)
    except SchedulerBusy as err:  # before ValueError: it is one
        raise ApiError(429, str(err), type="rate_limit_error", code="server_busy") from None
    except (SteeringError, PromptError) as err:  # e.g. a preset's 'x max' without an index
        raise ApiError(400, str(err)) from None
    rid = new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(ticket, lm, served.id, rid, chat, job, include_usage, request),
                                 media_type="text/event-stream")
    try:
        rows = await anyio.to_thread.run_sync(lambda: collect(ticket, lm, job), abandon_on_cancel=True)
    finally:
        ticket.cancel()  # a no-op once finished; frees the rows when the client went away
    texts = [r.text for r in rows]
    reasons = [finish_reason(r, job) for r in rows]
    use = usage(ticket.prompt_tokens, sum(r.tokens() for r in rows))
    make = chat_object if chat else completion_object
    return make(rid, served.id, texts, reasons, use)


class Row(RowText):
    """A row's text plus what ended it."""

    text_stopped = False  # a stop sequence (not EOS) ended it

    def tokens(self) -> int:
        """Generated tokens, EOS included."""
        return len(self.ids) + (1 if self.stopped and not self.text_stopped else 0)


def new_rows(lm: LoadedModel, job: Job) -> list[Row]:
    return [Row(lm.tokenizer, job.stop_texts, lm.tokenizer.eos_token_id) for _ in job.rows]


def feed(row: Row, token: int | None) -> str:
    if token is None or row.stopped:
        return ""
    before_eos = token != row.eos
    out = row.add(token)
    row.text_stopped = row.stopped and before_eos
    return out


def collect(ticket, lm: LoadedModel, job: Job) -> list[Row]:
    rows = new_rows(lm, job)
    for event in ticket.events():
        feed(rows[event.row], event.token_id)
        if all(r.stopped for r in rows):
            break  # stop sequences ended every row: the rest is not wanted
    return rows


def finish_reason(row: Row, job: Job) -> str:
    """'length' when the row ran to max_tokens without EOS, a stop sequence or its stop feature."""
    if row.stopped or len(row.ids) < job.settings.max_new_tokens:
        return "stop"
    return "length"


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def stream(ticket, lm: LoadedModel, model: str, rid: str, chat: bool, job: Job,
                 include_usage: bool, request: Request):
    """Server-sent events: one chunk per piece of text, a last one per row with its
    finish reason, then `[DONE]`. A client that goes away cancels the ticket."""
    rows = new_rows(lm, job)
    ended = [False] * len(rows)
    events = iter(ticket.events())
    done = object()
    try:
        if chat:
            for i in range(len(rows)):
                yield sse(chunk(rid, model, chat, i, "", None, first=True))
        while not all(ended):
            event = await anyio.to_thread.run_sync(next, events, done, abandon_on_cancel=True)
            if event is done or await request.is_disconnected():
                break
            row = rows[event.row]
            text = feed(row, event.token_id)
            if text:
                yield sse(chunk(rid, model, chat, event.row, text, None))
            if (event.finished or row.stopped) and not ended[event.row]:
                ended[event.row] = True
                rest = row.flush()
                if rest:
                    yield sse(chunk(rid, model, chat, event.row, rest, None))
                yield sse(chunk(rid, model, chat, event.row, None, finish_reason(row, job)))
        if include_usage:
            yield sse(usage_chunk(rid, model, chat, usage(ticket.prompt_tokens, sum(r.tokens() for r in rows))))
        yield b"data: [DONE]\n\n"
    finally:
        ticket.cancel()


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until Ctrl-C."""
    import uvicorn

    if host not in LOCAL_HOSTS:
        log.warning("Serving on %s: anyone who can reach this address can use the model, with no authentication. "
                    "Use --host 127.0.0.1 unless that is what you want.", host)
    uvicorn.run(app, host=host, port=port, log_level="info")
