"""The FastAPI application: ``POST /retrieve`` and ``GET /health``, built by ``create_app``.

Loading wiki-18 takes minutes, so the lifespan starts loading in the background and the server
answers at once: ``/health`` says ``loading`` (503) until the retriever is ready (200), and
``/retrieve`` answers 503 with ``Retry-After`` meanwhile. A load that fails is reported by
``/health`` (``failed`` and the reason) and handed to ``on_load_error`` (the CLI exits).

What the server cannot take it refuses before doing any work, with ``{"detail": ...}``: a body
larger than the largest valid request (413, see ``BodyLimits``), a body that does not arrive in
time (408), a missing or wrong access token when one is configured (401), an invalid request (422),
overload (503 with ``Retry-After``). The OpenAPI document lists every one of these answers.

Every request leaves one log line once answered (``RequestLog``), refusals included, unless
``config.request_log`` is off.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from local_dense_retriever.api import HEALTH_RESPONSES, format_result, request_model, retrieve_responses
from local_dense_retriever.batcher import MicroBatcher, Overloaded
from local_dense_retriever.fingerprint import server_fingerprint
from local_dense_retriever.retriever import Hit, Retriever, load_retriever
from local_dense_retriever.server_config import RETRY_AFTER_S, ServerConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _State:
    def __init__(self) -> None:
        self.status = "loading"
        self.error: str | None = None
        self.retriever: Retriever | None = None
        self.batcher: MicroBatcher[Hit] | None = None
        # Set once the load has ended, either way (status is then "ready" or "failed"): what the
        # Ray Serve deployment's health check waits for (local_dense_retriever/serve_app.py).
        self.settled = asyncio.Event()
        self.fingerprint: dict | None = None  # fingerprint.server_fingerprint, once loaded


def _json(content: dict, status_code: int = 200, headers: dict | None = None) -> Response:
    # Serialise directly: the response is plain JSON data, FastAPI's encoder pass would only cost time.
    return Response(json.dumps(content, ensure_ascii=False), status_code, headers, media_type="application/json")


class BodyLimits:
    """Pure ASGI middleware: a request body too large or too slow is refused as the app reads it.

    A body whose ``Content-Length`` exceeds ``max_bytes`` is refused (413) at the app's first read,
    before a byte of it is asked for: uvicorn buffers about 64 KiB of a body the app has not read
    (then stops reading the socket), so the server's memory does not grow with the claim. A body
    without a length (chunked) is counted as it arrives and refused once it passes ``max_bytes``,
    which is then the most memory it costs (bench/server_limits.py measures both). A body not complete within ``timeout_s`` of the request's start gets 408: the
    event loop is never blocked by a slow client, but without a deadline each one would hold a
    connection and its partial body for as long as it likes (uvicorn's own timeout,
    ``timeout_keep_alive``, only closes connections idle *between* requests; it has none for
    reading headers or a body). Both refusals close the connection, whose unread rest is not
    wanted. The refusal is an ``HTTPException`` raised from ``receive``, which FastAPI lets through
    its body parsing and turns into ``{"detail": ...}``. A body that is never read (``/health``, a
    401, 404 or 405 answered first) is not bounded here: its connection ends once the answer is
    sent (``http_limits``).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        declared = next((int(value) for name, value in scope["headers"] if name == b"content-length"), None)
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # later reads only wait for a disconnect
                return await receive()
            if declared is not None and declared > self.max_bytes:
                raise _refusal(413, f"the request body is {declared} bytes; this server takes at most {self.max_bytes} "
                               "(--max_body_bytes): send fewer or shorter queries per request")
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise _refusal(408, f"the request body did not arrive within {self.timeout_s:g} s (--body_timeout_s)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise _refusal(413, f"the request body passed {self.max_bytes} bytes, the most this server takes "
                                   "(--max_body_bytes): send fewer or shorter queries per request")
            return message

        await self.app(scope, limited_receive, send)


class RequestLog:
    """Pure ASGI middleware: one line per request once its answer is sent: method, path, status,
    latency, the number of queries (set by /retrieve once its body is valid) and the client.

    Outermost, so refusals made before the route runs (401, 408, 413) leave their line too. No
    header is logged, so the access token never is; nor are the queries (they can be long, and
    private). ``GET /health`` is logged at DEBUG: clients and orchestrators poll it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # The route reports its query count here (Request.state is this dict).
        state = scope.setdefault("state", {})
        status = "-"  # no answer: the client left first

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            queries = state.get("queries")
            client = scope.get("client")
            logger.log(
                logging.DEBUG if scope["path"] == "/health" else logging.INFO,
                "%s %s %s in %.1f ms%s%s",
                scope["method"], scope["path"], status, (time.perf_counter() - started) * 1000,
                "" if queries is None else f", {queries} {'query' if queries == 1 else 'queries'}",
                "" if client is None else f" (client {client[0]}:{client[1]})",
            )


async def _in_daemon_thread(fn: Callable[[ServerConfig], T], config: ServerConfig) -> T:
    """``fn(config)`` in a daemon thread: a signal during a minutes-long load stops the server at once.

    ``asyncio.to_thread`` runs it in the loop's executor, whose threads ``asyncio.run`` and the
    interpreter wait for at exit, so Ctrl-C during loading waited for the load to finish. A
    daemon thread is left behind instead, with its half-done load.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled: the server is stopping
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = fn(config)
        except BaseException as exc:  # handed to the loop, which reports it
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the server stopped during the load
            pass

    threading.Thread(target=run, name="retriever-load", daemon=True).start()
    return await future


def _refusal(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail, headers={"Connection": "close"})


def _public_config(config: ServerConfig) -> dict:
    """The config as /health shows it: the access token is never shown, only whether one is set."""
    return {**asdict(config), "api_key": "<redacted>" if config.api_key else None}


def create_app(
    config: ServerConfig,
    *,
    load: Callable[[ServerConfig], Retriever] = load_retriever,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app. ``load`` builds the retriever (tests may pass a prepared one)."""
    state = _State()

    def load_and_fingerprint(config: ServerConfig) -> tuple[Retriever, dict]:
        retriever = load(config)
        return retriever, server_fingerprint(config, retriever)

    async def load_in_background() -> None:
        try:
            retriever, fingerprint = await _in_daemon_thread(load_and_fingerprint, config)
        except Exception as exc:
            if isinstance(exc, (ValueError, OSError)):  # a wrong file, flag or model: the reason says it all
                logger.error("loading the retriever failed: %s", " ".join(str(exc).split()))
            else:  # our own bug: its traceback
                logger.exception("loading the retriever failed")
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            state.settled.set()
            if on_load_error is not None:
                on_load_error(exc)
            return
        batcher: MicroBatcher[Hit] = MicroBatcher(
            retriever.retrieve,
            max_batch_size=config.max_batch_size,
            max_wait_s=config.max_wait_ms / 1000,
            max_gap_s=config.max_gap_ms / 1000,
            max_pending_queries=config.max_pending_queries,
        )
        batcher.start()
        state.retriever, state.batcher, state.fingerprint, state.status = retriever, batcher, fingerprint, "ready"
        state.settled.set()
        logger.info("retriever ready: %d passages, fingerprint %s", len(retriever), fingerprint["id"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            loader.cancel()
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.stop)

    app = FastAPI(title="Search-R1 local retrieval server", lifespan=lifespan)
    app.add_middleware(BodyLimits, max_bytes=config.body_limit, timeout_s=config.body_timeout_s)
    if config.request_log:
        app.add_middleware(RequestLog)  # added last: the outermost, it sees every answer
    app.state.retrieval = state
    # Computed once: /health is asked repeatedly while the retriever loads, and each answer takes
    # the GIL from the loading thread.
    public_config = _public_config(config)
    RetrieveRequest = request_model(config.max_queries_per_request, config.max_query_chars, config.max_topk)

    @app.get("/health", responses=HEALTH_RESPONSES)
    async def health() -> Response:
        body: dict = {"status": state.status, "config": public_config}
        if state.error:
            body["error"] = state.error
        if state.retriever is not None:
            body["passages"] = len(state.retriever)
            body["searcher"] = state.retriever.searcher.describe()
            body["fingerprint"] = state.fingerprint
            if (reranker := state.retriever.describe_reranker()) is not None:
                body["reranker"] = reranker
        if state.batcher is not None:
            body["served"] = {"batches": state.batcher.batches_run, "queries": state.batcher.queries_run}
        return _json(body, 200 if state.status == "ready" else 503)

    # The body is parsed and validated by pydantic in one pass (model_validate_json, in Rust):
    # measured against FastAPI's own body pipeline, the server's CPU per request fell from about
    # 180 to 130 us, CPU that the encoder needs when both share a machine. The schema is still
    # published in the OpenAPI docs.
    body_schema = {"application/json": {"schema": RetrieveRequest.model_json_schema()}}

    @app.post(
        "/retrieve",
        openapi_extra={"requestBody": {"required": True, "content": body_schema}},
        responses=retrieve_responses(with_token=config.api_key is not None),
        dependencies=[] if config.api_key is None else [Depends(_token_check(config.api_key))],
    )
    async def retrieve(raw: Request) -> Response:
        try:
            request = RetrieveRequest.model_validate_json(await raw.body())
        except ValidationError as exc:
            return _json({"detail": exc.errors(include_url=False, include_context=False, include_input=False)}, 422)
        except ClientDisconnect:  # gone before its body arrived: nobody reads an answer
            logger.debug("a client disconnected while sending its request")
            return Response(status_code=400)
        raw.state.queries = len(request.queries)  # for the request's log line
        if state.batcher is None or state.retriever is None:
            detail = f"the retriever is {state.status}" + (f": {state.error}" if state.error else "; retry shortly")
            return _json({"detail": detail}, 503, {"Retry-After": str(RETRY_AFTER_S)})
        # A corpus smaller than topk gives all its passages (as an index with fewer hits would).
        topk = min(request.topk if request.topk is not None else config.topk, len(state.retriever))
        if (problem := state.retriever.topk_problem(topk)) is not None:
            return _json({"detail": problem}, 422)
        try:
            hits = await _search_non_blank(state.batcher, request.queries, topk)
        except Overloaded as exc:
            return _json({"detail": f"server overloaded: {exc}; retry shortly"}, 503, {"Retry-After": str(RETRY_AFTER_S)})
        except Exception as exc:  # the batch failed (logged with its traceback by the worker)
            return _json({"detail": f"retrieval failed: {type(exc).__name__}: {exc}"}, 500)
        # A field Search-R1's clients ignore: which index, corpus and encoder gave this answer.
        return _json({**format_result(hits, request.return_scores), "fingerprint": state.fingerprint["id"]})

    return app


async def _search_non_blank(batcher: MicroBatcher[Hit], queries: list[str], topk: int) -> list[list[Hit]]:
    """Each query's hits; a blank query (empty or whitespace only) gets none and is not searched.

    Upstream's dense server encodes a blank query and answers the passages nearest to its bare
    prefix, unrelated to anything; refusing it would fail every query sent with it.
    """
    asked = [i for i, query in enumerate(queries) if query.strip()]
    hits: list[list[Hit]] = [[] for _ in queries]
    if asked:
        for i, own in zip(asked, await batcher.submit([queries[i] for i in asked], topk)):
            hits[i] = own
    return hits


def _token_check(api_key: str) -> Callable[..., Awaitable[None]]:
    """A dependency requiring ``Authorization: Bearer <api_key>``; declares the scheme in OpenAPI."""
    expected = api_key.encode()
    bearer = HTTPBearer(auto_error=False, description="the server's --api_key (or RETRIEVAL_API_KEY)")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if credentials is None:
            problem = "this server requires an access token"
        # Constant time: how long a comparison takes must not tell how much of a guess was right.
        elif not hmac.compare_digest(credentials.credentials.encode(), expected):
            problem = "the access token is wrong"
        else:
            return
        raise HTTPException(401, f"{problem}: send the header 'Authorization: Bearer <token>' with the server's "
                            "--api_key (clients: RETRIEVAL_API_KEY)", headers={"WWW-Authenticate": "Bearer"})

    return check
