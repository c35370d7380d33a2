"""HTTP API and web page over a Pipeline (FastAPI + uvicorn).

Endpoints: ``POST /answer``, ``POST /retrieve``, ``GET /health``, ``GET /info``, and the page at ``/``. The
OpenAPI schema is at ``/openapi.json`` (browsable at ``/docs``).

The models run on one worker thread. Concurrent ``/answer`` requests that arrive within ``batch_window_ms`` of
each other (up to ``max_batch``) are answered by one ``Pipeline.answer_batch`` call: the questions are encoded
in one forward pass and searched together. Every user mistake (empty question, wrong types, unknown language
code, k out of range, oversized body, a Host header not allowed) is a 4xx with a message. A request the models
cannot finish within ``timeout_s`` is a 504 and its work is dropped; when more are waiting than can be answered
within ``timeout_s`` (or than ``max_queue``), a new one is refused at once with 503 and Retry-After.
"""


# No "from __future__ import annotations": FastAPI resolves the request models defined inside create_app()
# from the annotations at definition time.
import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cora.errors import CoraError
from cora.languages import is_known
from cora.questions import check_question

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
    max_queue: int = field(default=64, metadata={
        "help": "most requests waiting for the models; more (or more than can be answered within --timeout-s at "
                "the measured speed) get 503 with Retry-After"})
    allowed_hosts: str = field(default="localhost,127.0.0.1,::1", metadata={
        "help": "comma-separated names the Host header may carry ('*': any); other requests get 400, so a web "
                "page cannot reach a loopback server through DNS rebinding"})


def snippet(text: str, start: int | None, end: int | None, width: int) -> tuple[str, int | None, int | None]:
    """A window of ``width`` characters around [start, end) and the span's offsets inside it."""
    if start is None or end is None or len(text) <= width:
        return (text if len(text) <= width else text[:width] + "…"), start, end
    lo = max(0, min(start - (width - (end - start)) // 2, len(text) - width))
    hi = min(len(text), max(lo + width, end))
    prefix = "…" if lo else ""
    return prefix + text[lo:hi] + ("…" if hi < len(text) else ""), start - lo + len(prefix), end - lo + len(prefix)


class _Slot:
    """One admitted request's place in the model queue. ``abandoned`` is set when its client stops waiting (the
    504 timeout), so the model thread skips it instead of working for nobody."""

    __slots__ = ("question", "lang", "fut", "abandoned", "running", "released")

    def __init__(self, question: str = "", lang: str | None = None, fut=None):
        self.question, self.lang, self.fut = question, lang, fut
        self.abandoned = self.running = self.released = False


class _Batcher:
    """Gathers concurrent answer requests with the same k and runs them as one batch on the model thread.

    Overload: a request is admitted only while fewer than ``max_queue`` are outstanding and the wait estimated
    from the measured seconds per question fits within ``timeout_s``; otherwise it gets 503 with Retry-After at
    once, instead of a 504 after waiting. A request that times out is abandoned: its question is dropped from
    the batch it waits in (or from the model queue) and never run."""

    def __init__(self, pipeline, config: ServeConfig, executor: ThreadPoolExecutor):
        self.pipeline, self.config, self.executor = pipeline, config, executor
        self.pending: dict[int, list[_Slot]] = {}
        self.lock = asyncio.Lock()
        self.batches = 0
        self.questions = 0
        self.outstanding = 0  # admitted requests not yet answered (queued or on the model thread)
        self.seconds_per_question: float | None = None  # moving average, measured on the model thread
        self.refused = 0
        self.abandoned = 0

    # --- admission
    def retry_after(self) -> int:
        spq = self.seconds_per_question or self.config.timeout_s / max(1, self.config.max_queue)
        return max(1, math.ceil(self.outstanding * spq))

    def admit(self, question: str = "", lang: str | None = None, fut=None) -> _Slot | None:
        """A slot in the queue, or None when the server is full (the caller answers 503)."""
        full = self.outstanding >= self.config.max_queue
        if not full and self.outstanding:
            if self.seconds_per_question is None:  # nothing measured yet: one batch at a time
                full = self.outstanding >= self.config.max_batch
            else:
                # Batches vary in speed: keep a fifth of the timeout as margin. An idle server always admits, so
                # one slow measurement cannot lock it into refusing (and the estimate is refreshed).
                full = (self.outstanding + 1) * self.seconds_per_question > 0.8 * self.config.timeout_s
        if full:
            self.refused += 1
            return None
        self.outstanding += 1
        return _Slot(question, lang, fut)

    def release(self, slot: _Slot) -> None:
        if not slot.released:
            slot.released = True
            self.outstanding -= 1

    def measured(self, seconds: float, n: int) -> None:
        if n:
            spq = seconds / n
            old = self.seconds_per_question
            self.seconds_per_question = spq if old is None else 0.7 * old + 0.3 * spq

    async def run_one(self, slot: _Slot, fn, *args):
        """Run ``fn(*args)`` on the model thread for an admitted slot, unless it was abandoned before its turn."""
        loop = asyncio.get_running_loop()

        def work():
            if slot.abandoned:
                return None
            slot.running = True
            t0 = time.perf_counter()
            out = fn(*args)
            self.measured(time.perf_counter() - t0, 1)
            return out

        try:
            return await loop.run_in_executor(self.executor, work)
        finally:
            slot.abandoned = True
            self.release(slot)

    # --- answers
    async def answer(self, slot: _Slot, k: int):
        loop = asyncio.get_running_loop()
        slot.fut = loop.create_future()
        try:
            async with self.lock:
                queue = self.pending.setdefault(k, [])
                queue.append(slot)
                first = len(queue) == 1
                full = len(queue) >= self.config.max_batch
                if full:
                    self.pending.pop(k)
            if full:
                loop.create_task(self._run(queue, k))
            elif first:
                loop.call_later(self.config.batch_window_ms / 1000, lambda: loop.create_task(self._flush(k, queue)))
            return await slot.fut
        finally:
            slot.abandoned = True  # answered, failed or timed out: nothing more to compute for it
            if not slot.running:
                self.release(slot)

    async def _flush(self, k: int, queue: list) -> None:
        async with self.lock:
            if self.pending.get(k) is not queue:
                return  # already run because it filled up
            self.pending.pop(k)
        await self._run(queue, k)

    def _answer_live(self, queue: list[_Slot], k: int):
        """On the model thread: answer the slots whose clients still wait, in model calls sized to take about a
        quarter of the timeout at the measured speed, checking before each call who still waits; so a burst
        wastes at most one such call on clients that left, and each call refreshes the speed estimate."""
        done, answers = [], []
        pending = list(queue)
        while pending:
            pending = [s for s in pending if not s.abandoned]
            if not pending:
                break
            spq = self.seconds_per_question
            size = len(pending) if spq is None else max(1, int(0.25 * self.config.timeout_s / spq))
            part, pending = pending[:size], pending[size:]
            for s in part:
                s.running = True
            t0 = time.perf_counter()
            answers += self.pipeline.answer_batch([s.question for s in part], [s.lang for s in part], k)
            self.measured(time.perf_counter() - t0, len(part))
            done += part
        return done, answers

    async def _run(self, queue: list[_Slot], k: int) -> None:
        loop = asyncio.get_running_loop()
        self.batches += 1
        try:
            try:
                live, answers = await loop.run_in_executor(self.executor, self._answer_live, queue, k)
                results = [(a, None) for a in answers]
            except Exception:  # noqa: BLE001 - isolate the request that failed: answer the batch one by one
                live, results = [s for s in queue if not s.abandoned], []
                for s in live:
                    try:
                        results.append((await loop.run_in_executor(self.executor, self.pipeline.answer, s.question,
                                                                   s.lang, k), None))
                    except Exception as err:  # noqa: BLE001 - handed to that request's handler
                        results.append((None, err))
            self.questions += len(live)
            self.abandoned += len(queue) - len(live)
            for slot, (answer, err) in zip(live, results, strict=True):
                if slot.fut.done():
                    continue  # the client timed out while its batch ran
                if err is not None:
                    slot.fut.set_exception(err)
                else:
                    slot.fut.set_result(answer)
        finally:
            for slot in queue:  # the model is done with every question of this batch
                slot.running = False
                self.release(slot)


class _Guard:
    """ASGI middleware in front of the app: refuse a Host header that is not allowed (DNS rebinding: a web page
    on another site resolving its own name to 127.0.0.1 must not reach a loopback server) with 400, and request
    bodies over ``limit`` bytes with 413, counted as they arrive whether declared or chunked."""

    def __init__(self, app, limit: int, allowed_hosts: str):
        self.app, self.limit = app, limit
        names = {h.strip().lower() for h in allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in names or not names
        self.hosts = {h.strip("[]") for h in names}

    def host_allowed(self, headers: dict) -> bool:
        if self.any_host:
            return True
        host = headers.get(b"host")
        if host is None:
            return True  # HTTP/1.0 clients send none; a browser always does
        host = host.decode("latin-1").strip().lower()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        if host.count(":") > 1 and not host.startswith("["):
            name = host  # a bare IPv6 address
        return name in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not self.host_allowed(headers):
            return await _send_json(send, 400, {"detail": "Host header not allowed (start the server with "
                                                          "--allowed-hosts to serve this name)"})
        if not self.limit:
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
        # Read the whole body here (it is small: at most `limit` bytes), so a chunked body that grows past the
        # limit is a 413 too, not an error inside the app's body parser.
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
            if problem := check_question(v):
                raise ValueError(problem)
            return v

        @field_validator("lang")
        @classmethod
        def _known_lang(cls, v: str | None) -> str | None:
            if v is not None and not is_known(v):
                raise ValueError(f"unknown language code {v!r} (expected an ISO 639 code or BCP-47 tag, e.g. "
                                 "'de', 'zh-TW', 'hau')")
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
        errors = [{"field": "body", "message": f"not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))}); "
                                               "send a JSON object such as {\"question\": \"...\"}"}
                  if e.get("type") == "json_invalid"  # its loc is the byte offset, which is no field
                  else {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})

    def _admit(question: str, lang: str | None) -> _Slot:
        slot = batcher.admit(question, lang)
        if slot is None:
            wait = batcher.retry_after()
            raise HTTPException(503, f"the server is busy; retry in {wait} s", headers={"Retry-After": str(wait)})
        return slot

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
                "query_encoder": _query_tower(pipeline),
                "reader": {"backend": pipeline.reader.config.backend, "model": pipeline.reader.config.model},
                "k": pipeline.config.k, "projection": pipeline.config.projection, "limits": asdict(config),
                "batching": {"batches": batcher.batches, "questions": batcher.questions},
                "load": {"outstanding": batcher.outstanding, "refused": batcher.refused,
                         "abandoned": batcher.abandoned,
                         "seconds_per_question": batcher.seconds_per_question}}

    @app.post("/answer", response_model=AnswerOut)
    async def answer(ask: Ask):
        t0 = time.perf_counter()
        slot = _admit(ask.question, ask.lang)
        a = await _model_call(batcher.answer(slot, ask.k or pipeline.config.k))
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
        slot = _admit(ask.question, ask.lang)
        hits = await _model_call(batcher.run_one(slot, pipeline.retriever.search, ask.question,
                                                 ask.k or pipeline.config.k, ask.lang))
        out = [HitOut(rank=h.rank, id=h.passage_id, lang=h.lang, title=h.title,
                      snippet=snippet(h.text, None, None, config.snippet_chars)[0], score=h.score) for h in hits]
        return RetrieveOut(hits=out, seconds=round(time.perf_counter() - t0, 4))

    app.state.batcher = batcher
    return _Guard(app, config.max_body_bytes, config.allowed_hosts)


def _query_tower(pipeline) -> dict:
    """What encodes the questions: the index's own encoder, or the pipeline's query encoder (and its adapter's
    scope: 'cross-lingual' uses it only for questions in languages the datastore lacks)."""
    encoder = pipeline.retriever.encoder
    adapter = encoder.query_model is not None
    return {"name": pipeline.config.query_encoder or pipeline.retriever.index.config.encoder,
            "adapter": encoder.config.query_adapter if adapter else None,
            "scope": encoder.config.query_adapter_scope if adapter else None}


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
