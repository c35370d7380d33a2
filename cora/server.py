"""HTTP API and web page over a Pipeline (FastAPI + uvicorn).

Endpoints: ``POST /answer``, ``POST /retrieve``, ``GET /health``, ``GET /info``, and the page at ``/``. The
OpenAPI schema is at ``/openapi.json`` (browsable at ``/docs``).

The models run on one worker thread. Concurrent ``/answer`` requests that arrive within ``batch_window_ms`` of
each other (up to ``max_batch``) are answered by one ``Pipeline.answer_batch`` call: the questions are encoded
in one forward pass and searched together. Every user mistake (empty question, wrong types, unknown language
code, k out of range, oversized body) is a 4xx with a message; a request the models cannot finish within
``timeout_s`` is a 504.
"""


# No "from __future__ import annotations": FastAPI resolves the request models defined inside create_app()
# from the annotations at definition time.
import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cora.errors import CoraError
from cora.languages import is_known

logger = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "resources" / "index.html"


@dataclass
class ServeConfig:
    max_question_chars: int = field(default=1000, metadata={"help": "longest question accepted (characters)"})
    max_k: int = field(default=20, metadata={"help": "largest k a request may ask for"})
    max_body_bytes: int = field(default=16_384, metadata={"help": "largest request body"})
    timeout_s: float = field(default=60.0, metadata={"help": "seconds a request may wait for the models"})
    batch_window_ms: float = field(default=10.0, metadata={"help": "how long to gather concurrent questions"})
    max_batch: int = field(default=16, metadata={"help": "most questions answered in one model call"})
    snippet_chars: int = field(default=300, metadata={"help": "characters of passage text in responses"})


def snippet(text: str, start: int | None, end: int | None, width: int) -> tuple[str, int | None, int | None]:
    """A window of ``width`` characters around [start, end) and the span's offsets inside it."""
    if start is None or end is None or len(text) <= width:
        return (text if len(text) <= width else text[:width] + "…"), start, end
    lo = max(0, min(start - (width - (end - start)) // 2, len(text) - width))
    hi = min(len(text), max(lo + width, end))
    prefix = "…" if lo else ""
    return prefix + text[lo:hi] + ("…" if hi < len(text) else ""), start - lo + len(prefix), end - lo + len(prefix)


class _Batcher:
    """Gathers concurrent answer requests with the same k and runs them as one batch on the model thread."""

    def __init__(self, pipeline, config: ServeConfig, executor: ThreadPoolExecutor):
        self.pipeline, self.config, self.executor = pipeline, config, executor
        self.pending: dict[int, list] = {}
        self.lock = asyncio.Lock()
        self.batches = 0
        self.questions = 0

    async def answer(self, question: str, lang: str | None, k: int):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        async with self.lock:
            queue = self.pending.setdefault(k, [])
            queue.append((question, lang, fut))
            first = len(queue) == 1
            full = len(queue) >= self.config.max_batch
            if full:
                self.pending.pop(k)
        if full:
            loop.create_task(self._run(queue, k))
        elif first:
            loop.call_later(self.config.batch_window_ms / 1000, lambda: loop.create_task(self._flush(k, queue)))
        return await fut

    async def _flush(self, k: int, queue: list) -> None:
        async with self.lock:
            if self.pending.get(k) is not queue:
                return  # already run because it filled up
            self.pending.pop(k)
        await self._run(queue, k)

    async def _run(self, queue: list, k: int) -> None:
        loop = asyncio.get_running_loop()
        questions, langs = [q for q, _, _ in queue], [lang for _, lang, _ in queue]
        self.batches += 1
        self.questions += len(queue)
        try:
            answers = await loop.run_in_executor(self.executor, self.pipeline.answer_batch, questions, langs, k)
            results = [(a, None) for a in answers]
        except Exception:  # noqa: BLE001 - isolate the request that failed: answer the batch one by one
            results = []
            for q, lang in zip(questions, langs, strict=True):
                try:
                    results.append((await loop.run_in_executor(self.executor, self.pipeline.answer, q, lang, k),
                                    None))
                except Exception as err:  # noqa: BLE001 - handed to that request's handler
                    results.append((None, err))
        for (_, _, fut), (answer, err) in zip(queue, results, strict=True):
            if fut.done():
                continue  # the client timed out
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(answer)


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, counted as they arrive."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(pipeline, config: ServeConfig | None = None):
    """The FastAPI application serving ``pipeline``."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

    import cora

    config = config or ServeConfig()
    max_k = min(config.max_k, pipeline.config.max_k)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cora-model")
    batcher = _Batcher(pipeline, config, executor)
    started = time.time()

    class Ask(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: StrictStr = Field(description="the question, in any language",
                                    max_length=config.max_question_chars)
        lang: StrictStr | None = Field(None, description="ISO 639-1 code of the question (detected when absent)")
        k: StrictInt | None = Field(None, ge=1, le=max_k, description=f"passages to read (1-{max_k})")

        @field_validator("question")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("the question is empty")
            return v

        @field_validator("lang")
        @classmethod
        def _known_lang(cls, v: str | None) -> str | None:
            if v is not None and not is_known(v):
                raise ValueError(f"unknown language code {v!r} (expected ISO 639-1, e.g. 'de', 'zh-TW')")
            return v

    class EvidenceOut(BaseModel):
        id: str
        lang: str
        title: str
        snippet: str
        start: int | None = Field(None, description="answer span inside the snippet (characters)")
        end: int | None = None
        score: float | None = None
        role: str = Field(description="'source' (read there) or 'projection' (moved there by a language link)")

    class AnswerOut(BaseModel):
        answer: str
        lang: str
        score: float
        projected: bool
        evidence: list[EvidenceOut]
        seconds: float

    class HitOut(BaseModel):
        rank: int
        id: str
        lang: str
        title: str
        snippet: str
        score: float

    class RetrieveOut(BaseModel):
        hits: list[HitOut]
        seconds: float

    app = FastAPI(title="cora", version=cora.__version__,
                  description="Cross-lingual open-retrieval question answering with cited evidence.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})

    async def _model_call(coro):
        try:
            return await asyncio.wait_for(coro, timeout=config.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within {config.timeout_s:g} s") from None
        except CoraError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/info")
    async def info():
        ds = pipeline.retriever.datastore
        return {"version": cora.__version__, "datastore": {"passages": len(ds), "languages": ds.languages},
                "encoder": pipeline.retriever.encoder.config.backbone,
                "reader": {"backend": pipeline.reader.config.backend, "model": pipeline.reader.config.model},
                "k": pipeline.config.k, "projection": pipeline.config.projection, "limits": asdict(config),
                "batching": {"batches": batcher.batches, "questions": batcher.questions}}

    @app.post("/answer", response_model=AnswerOut)
    async def answer(ask: Ask):
        t0 = time.perf_counter()
        a = await _model_call(batcher.answer(ask.question, ask.lang, ask.k or pipeline.config.k))
        evidence = []
        for ev in a.evidence:
            text, s, e = snippet(ev.text, ev.start, ev.end, config.snippet_chars)
            evidence.append(EvidenceOut(id=ev.passage_id, lang=ev.lang, title=ev.title, snippet=text, start=s,
                                        end=e, score=ev.score, role=ev.role))
        return AnswerOut(answer=a.text, lang=a.lang, score=a.score, projected=a.projected, evidence=evidence,
                         seconds=round(time.perf_counter() - t0, 4))

    @app.post("/retrieve", response_model=RetrieveOut)
    async def retrieve(ask: Ask):
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        hits = await _model_call(loop.run_in_executor(executor, pipeline.retriever.search, ask.question,
                                                      ask.k or pipeline.config.k))
        out = [HitOut(rank=h.rank, id=h.passage_id, lang=h.lang, title=h.title,
                      snippet=snippet(h.text, None, None, config.snippet_chars)[0], score=h.score) for h in hits]
        return RetrieveOut(hits=out, seconds=round(time.perf_counter() - t0, 4))

    app.state.batcher = batcher
    return _BodyLimit(app, config.max_body_bytes) if config.max_body_bytes else app


class BackgroundServer:
    """Run an app with uvicorn on a thread (tests, benchmarks): ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise CoraError("the server did not start (port in use?)")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


__all__ = ["ServeConfig", "create_app", "BackgroundServer", "snippet"]
