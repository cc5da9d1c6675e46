"""`clara serve`: an HTTP JSON API over one store, with the model loaded once.

    POST /search  {"query": str | [str], "k"?, "retriever"?, "nprobe"?, "ef_search"?, "rerank"?}
                  -> [hit, ...] as `clara search --json` prints them (with "query" for a list)
    POST /ask     {"question": str | [str], "k"?, "max_new_tokens"?, "retriever"?, ...}
                  -> the answer object of `clara ask --json` (a list of them for a list)
    GET  /info    -> `clara info --json`, plus "model_loaded"
    GET  /health  -> {"status": "ok", ...}

Errors: {"error": "one line", "exit_code": N} with the CLI's exit codes (README "Exit codes")
and the HTTP status of ERROR_STATUS. Every request reads the last committed snapshot, so a
`clara update` may run beside the server; requests run in a thread pool, one model forward at
a time (bm25 searches alongside).
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .answer import DEFAULT_RETRIEVER
from .api import ClaraStore
from .errors import ClaraError, UsageError

# exit code -> HTTP status: 1 error, 2 usage, 4 busy, 5 model mismatch, 6 corrupt data
ERROR_STATUS = {1: 500, 2: 400, 3: 422, 4: 503, 5: 409, 6: 500}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1)
    retriever: Literal["latent", "bm25", "hybrid"] = DEFAULT_RETRIEVER
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    rerank: int | None = Field(None, ge=1)


class SearchRequest(_Options):
    query: str | list[str]


class AskRequest(_Options):
    question: str | list[str]
    max_new_tokens: int = Field(64, ge=1)
    min_score: float | None = None
    expand: int | None = Field(None, ge=0)


def error(message: str, exit_code: int) -> JSONResponse:
    return JSONResponse({"error": message, "exit_code": exit_code}, status_code=ERROR_STATUS.get(exit_code, 500))


def create_app(store: ClaraStore) -> FastAPI:
    """The ASGI app over one ClaraStore (tests and other servers can mount it)."""
    app = FastAPI(title="clara", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ClaraError)
    async def clara_error(request: Request, err: ClaraError) -> JSONResponse:
        return error(str(err), err.exit_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}", 2)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail), "exit_code": 2}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        if isinstance(err, OSError):
            where = f"{err.filename}: " if err.filename else ""
            return error(f"{where}{err.strerror or err}", 1)
        return error(f"internal error: {type(err).__name__}: {err}", 1)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "store": str(store.path), "model_loaded": store.model_loaded}

    @app.get("/info")
    def info() -> dict:
        return {**store.info(), "model_loaded": store.model_loaded}

    async def body(request: Request, model: type[BaseModel]):
        """The JSON body (whatever the Content-Type says: `curl -d` sends a form type), validated."""
        raw = await request.body()
        try:
            obj = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"the request body is not JSON ({err})") from None
        try:
            return model.model_validate(obj)
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from None

    @app.post("/search")
    async def search(request: Request) -> list[dict]:
        req = await body(request, SearchRequest)
        results = await run_in_threadpool(store.search, req.query, k=req.k, retriever=req.retriever,
                                          nprobe=req.nprobe, ef_search=req.ef_search, rerank=req.rerank)
        if isinstance(req.query, str):
            return [h.to_dict() for h in results]
        return [{"query": q, **h.to_dict()} for q, hits in zip(req.query, results, strict=True) for h in hits]

    @app.post("/ask")
    async def ask(request: Request) -> dict | list[dict]:
        req = await body(request, AskRequest)
        answers = await run_in_threadpool(store.ask, req.question, k=req.k, max_new_tokens=req.max_new_tokens,
                                          retriever=req.retriever, nprobe=req.nprobe, ef_search=req.ef_search,
                                          rerank=req.rerank, min_score=req.min_score, expand=req.expand)
        return answers.to_dict() if isinstance(req.question, str) else [a.to_dict() for a in answers]

    return app


def serve_http(store: ClaraStore, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until interrupted. The socket is bound here, so --port 0 picks a free port, and the
    address is announced on stderr once it accepts connections."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, before uvicorn takes the socket
    except OSError as err:
        sock.close()
        raise ClaraError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(create_app(store), log_level=log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"clara: serving {store.path} on http://{shown}:{bound} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
