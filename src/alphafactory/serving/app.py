"""``alphafactory serve``: a verified bundle behind an HTTP API (FastAPI on uvicorn; one process,
or ``--workers N`` processes on one port, :mod:`alphafactory.serving.workers`).

Endpoints (OpenAPI schema at ``/openapi.json``, browsable at ``/docs``)::

    GET  /healthz        the process answers
    GET  /readyz         a verified bundle is loaded and serving (it is loaded before the port opens)
    GET  /v1/model       what the bundle holds (model_info: models, blend, horizons, hash, data)
    POST /v1/forecast    bars in (JSON records, CSV or parquet body) -> forecasts, exactly predict()'s
    GET  /v1/forecasts   rows already in the predictions table (--db): ?symbol=...&since=...&limit=...
    POST /v1/reload      load and verify a bundle (the same path, or {"models": path}), then swap it in
    GET  /metrics        Prometheus text format: requests, latencies, errors, reloads, memory

A forecast runs :func:`alphafactory.serving.inference.predict` on the request's bars with the
bundle current when the request began: a reload swaps one reference, so a request in flight
finishes on the bundle it started with, and a bundle that fails verification is refused (the old
one keeps serving). SIGHUP reloads the same way. Bad input is a 4xx whose body is
``{"error": "<the CLI's message>"}``; an unexpected failure a 500 without a traceback (the
traceback goes to the server log). Every request is logged as one JSON line
(``alphafactory.serve.access``). With ``--workers``, a reload (POST or SIGHUP to the supervisor)
reaches every worker, and each worker keeps its own metrics.
"""
from __future__ import annotations

import argparse
import gc
import hmac
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from alphafactory.errors import ConfigError, InputError
from alphafactory.serving.inference import Bundle, list_models, load_bundle, model_info, predict
from alphafactory.serving.workers import Link, Supervisor

log = logging.getLogger(__name__)
access_log = logging.getLogger("alphafactory.serve.access")

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/parquet", "application/x-parquet",
                 "application/octet-stream")
PARQUET_OUT = "application/vnd.apache.parquet"
MAX_BODY_BYTES = 64 << 20  # 64 MiB: 500 symbols x 600 bars is ~8 MiB of JSON, ~1.5 MiB of parquet
MAX_ROWS = 1_000_000  # bars per request (featurizing costs ~1 KiB per bar per feature column group)
MAX_READ_ROWS = 100_000  # rows one GET /v1/forecasts returns at most
USER_ERRORS = (ConfigError, InputError)  # bad input, not a bug: one line, exit status 2 (stage.user_errors)
BACKLOG = 2048  # connections waiting to be accepted: uvicorn's default, which it sets again when it serves
PREDICT_THREADS = 2  # forecasts computed at once (the rest queue): one per core of the target box
# Latency histogram buckets, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/healthz", "/readyz", "/v1/model", "/v1/forecast", "/v1/forecasts", "/v1/reload", "/metrics",
          "/openapi.json", "/docs")
OPEN_ROUTES = ("/healthz", "/readyz")  # probes answer without the token
_BAR = {"type": "object", "required": ["symbol", "timestamp", "open", "high", "low", "close", "volume"],
        "properties": {"symbol": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
                       **{c: {"type": "number"} for c in ("open", "high", "low", "close", "volume")}}}
# The body is read raw (three formats), so its schema is declared here for the OpenAPI document.
FORECAST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [
        {"type": "array", "items": _BAR},
        {"type": "object", "required": ["bars"], "properties": {
            "bars": {"type": "array", "items": _BAR}, "asof": {"type": "string"}, "components": {"type": "boolean"}}}]}},
    "text/csv": {"schema": {"type": "string"}},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}}}}


class RequestError(Exception):
    """A bad request the server names: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Metrics:
    """Counters and latency histograms, rendered in the Prometheus text exposition format."""

    def __init__(self, worker: int | None = None) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.reloads: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            counts = self.buckets[route]
            counts[int(np.searchsorted(BUCKETS, seconds))] += 1  # first bucket with le >= seconds
            self.sums[route] += seconds

    def reload(self, result: str) -> None:
        with self._lock:
            self.reloads[result] += 1

    def render(self, bundle: Bundle) -> str:
        with self._lock:
            lines = ["# HELP alphafactory_http_requests_total HTTP requests by method, route and status.",
                     "# TYPE alphafactory_http_requests_total counter"]
            lines += [f'alphafactory_http_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}'
                      for (m, r, s), n in sorted(self.requests.items())]
            lines += ["# HELP alphafactory_http_errors_total Responses with a 4xx (client) or 5xx (server) status.",
                      "# TYPE alphafactory_http_errors_total counter"]
            errors: dict[tuple[str, str], int] = defaultdict(int)
            for (_, r, s), n in self.requests.items():
                if s >= 400:
                    errors[(r, "client" if s < 500 else "server")] += n
            lines += [f'alphafactory_http_errors_total{{route="{r}",kind="{k}"}} {n}' for (r, k), n in sorted(errors.items())]
            lines += ["# HELP alphafactory_http_request_duration_seconds Time from request to response.",
                      "# TYPE alphafactory_http_request_duration_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                cum = np.cumsum(counts)
                lines += [f'alphafactory_http_request_duration_seconds_bucket{{route="{route}",le="{le}"}} {c}'
                          for le, c in zip([*map(str, BUCKETS), "+Inf"], cum, strict=True)]
                lines += [f'alphafactory_http_request_duration_seconds_sum{{route="{route}"}} {self.sums[route]!r}',
                          f'alphafactory_http_request_duration_seconds_count{{route="{route}"}} {cum[-1]}']
            lines += ["# HELP alphafactory_bundle_reloads_total Bundle reloads by result.",
                      "# TYPE alphafactory_bundle_reloads_total counter"]
            lines += [f'alphafactory_bundle_reloads_total{{result="{k}"}} {n}' for k, n in sorted(self.reloads.items())]
        lines += ["# HELP alphafactory_bundle_info The bundle serving now.", "# TYPE alphafactory_bundle_info gauge",
                  f'alphafactory_bundle_info{{sha256="{bundle.digest}",version="{bundle.version}"}} 1',
                  "# HELP process_resident_memory_bytes Resident memory of the server process.",
                  "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {resident_bytes()}"]
        if self.worker is not None:  # --workers: every counter above is this worker's own
            lines += ["# HELP alphafactory_worker_info The worker process that answered this scrape (--workers).",
                      "# TYPE alphafactory_worker_info gauge",
                      f'alphafactory_worker_info{{worker="{self.worker}",pid="{os.getpid()}"}} 1']
        return "\n".join(lines) + "\n"


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Service:
    """The bundle serving now, and how to replace it."""

    def __init__(self, models: str | Path, *, db: str | None = None, table: str = "preds",
                 max_body_bytes: int = MAX_BODY_BYTES, max_rows: int = MAX_ROWS,
                 token: str | None = None, threads: int = PREDICT_THREADS, worker: int | None = None,
                 link: Any = None) -> None:
        self.path = Path(models)
        self.bundle = load_bundle(self.path)  # raises BundleError: the server never starts on a bad bundle
        self.db, self.table = db, table
        self.max_body_bytes, self.max_rows = max_body_bytes, max_rows
        self.token = token
        self.threads = threads
        # --workers: this process's index, and its pipe to the supervisor (serving/workers.py),
        # through which POST /v1/reload reloads every worker; None when serving alone.
        self.worker, self.link = worker, link
        self.metrics = Metrics(worker)
        self._reload_lock = threading.Lock()
        self._engine = None
        if db is not None:
            from alphafactory.serving.db import reader_engine
            self._engine = reader_engine(db)  # GET /v1/forecasts; each write makes its own (write_predictions)

    def reload(self, path: str | Path | None = None) -> tuple[Bundle, Bundle]:
        """Load and verify the bundle at ``path`` (default: the current path), then swap it in.
        Returns (old, new). On any error the old bundle keeps serving and the error propagates."""
        with self._reload_lock:  # one reload at a time; requests never wait on it
            target = Path(path) if path is not None else self.path
            try:
                new = load_bundle(target)
            except Exception:
                self.metrics.reload("refused")
                raise
            old, self.bundle, self.path = self.bundle, new, target  # one reference swap
            self.metrics.reload("ok")
            freeze_heap(collect_frozen=True)
        log.info("serve: reloaded %s (sha256 %s, was %s)", target, new.digest[:12], old.digest[:12])
        return old, new

    def reload_logged(self) -> None:
        """SIGHUP: reload the same path; a refusal is logged, the old bundle keeps serving."""
        try:
            self.reload()
        except Exception as e:  # noqa: BLE001 - a signal handler has no caller to raise to
            log.error("serve: reload refused, still serving %s: %s", self.bundle.digest[:12], e)


# -- request bodies and responses -------------------------------------------------------------

def parse_bars(body: bytes, content_type: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The bars of a request body, and the options a JSON object body carries.

    JSON: an array of bar records, or ``{"bars": [...], "asof": ..., "components": ...}``; CSV
    with a header row; parquet. Raises :class:`RequestError` for a body that cannot be read."""
    kind = content_type.split(";")[0].strip().lower() or "application/json"
    if kind in JSON_TYPES:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise RequestError(400, f"body: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
        options: dict[str, Any] = {}
        if isinstance(doc, dict):
            unknown = sorted(set(doc) - {"bars", "asof", "components"})
            if unknown or "bars" not in doc:
                raise RequestError(422, f"body: JSON object keys {sorted(doc)}; expected 'bars' (an array of bar "
                                        f"records) and optionally 'asof', 'components'")
            options = {k: doc[k] for k in ("asof", "components") if k in doc}
            doc = doc["bars"]
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise RequestError(422, "body: expected a JSON array of bar records ({\"symbol\": ..., \"timestamp\": ..., "
                                    "\"open\": ..., ...}) or an object {\"bars\": [...]}")
        if not doc:
            raise RequestError(422, "body: no bars; expected at least one bar record")
        return pd.DataFrame.from_records(doc), options
    if kind in CSV_TYPES:
        try:
            return pd.read_csv(io.BytesIO(body)), {}
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise RequestError(400, f"body: not a CSV table ({type(e).__name__}: {str(e)[:200]})") from e
    if kind in PARQUET_TYPES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # one thread: a request body is small, and the server runs several at once
            return pq.read_table(pa.BufferReader(body), use_threads=False).to_pandas(use_threads=False), {}
        except (pa.ArrowException, OSError, ValueError) as e:
            raise RequestError(400, f"body: not a parquet file ({type(e).__name__}: {str(e)[:200]})") from e
    raise RequestError(415, f"Content-Type {kind!r} is not supported; expected one of "
                            f"{[*JSON_TYPES, *CSV_TYPES, *PARQUET_TYPES]}")


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-able rows of ``frame``: timestamps as ISO 8601, NaN as null, floats exact (Python's
    repr round-trips every float64, so a client reads back the very numbers predict() made)."""
    cols: dict[str, list] = {}
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_datetime64_any_dtype(s):
            cols[c] = [None if t is pd.NaT else t.isoformat() for t in s]
        elif pd.api.types.is_float_dtype(s):
            v = s.to_numpy(np.float64)
            cols[c] = [None if x != x else x for x in v.tolist()]
        else:
            cols[c] = [None if (isinstance(x, float) and x != x) else x for x in s.astype(object).tolist()]
    names = list(cols)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def _truthy(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise RequestError(422, f"{name}: got {value!r}, expected true or false")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes (by its Content-Length
    before reading anything, else while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: {int(declared)} bytes, more than the limit of {limit} bytes "
                                f"(--max-body-mb); send fewer bars per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than the limit of {limit} bytes (--max-body-mb); "
                                    f"send fewer bars per request")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the app ----------------------------------------------------------------------------------

def create_app(service: Service) -> FastAPI:
    """The ASGI app serving ``service``'s bundle."""
    app = FastAPI(title="alphafactory forecast service", version="1",
                  description="Multi-horizon return forecasts from a verified alphafactory bundle.")
    limiter = anyio.CapacityLimiter(service.threads)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError) -> Response:
        return _error(e.status, str(e))

    @app.exception_handler(InputError)
    async def _input_error(_: Request, e: InputError) -> Response:  # the CLI's messages, verbatim
        return _error(422, str(e))

    @app.exception_handler(ConfigError)
    async def _config_error(_: Request, e: ConfigError) -> Response:
        return _error(422, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> Response:
        what = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return _error(422, what or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:
        log.error("serve: %s %s failed", request.method, request.url.path, exc_info=e)
        return _error(500, f"internal error ({type(e).__name__}); see the server log")

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="A verified bundle is loaded")
    async def readyz() -> Response:
        b = service.bundle
        return _json({"status": "ready", "bundle_sha256": b.digest, "bundle_version": b.version})

    @app.get("/v1/model", summary="What the bundle holds")
    async def model() -> Response:
        b = service.bundle
        return _json({**model_info(b), "components": list_models(b)})

    @app.post("/v1/forecast", summary="Forecast every horizon from raw OHLCV bars", openapi_extra=FORECAST_BODY,
              description="Body: JSON records (or {\"bars\": [...], \"asof\": ..., \"components\": ...}), "
                          "CSV (text/csv) or parquet (application/vnd.apache.parquet). "
                          "Accept: application/vnd.apache.parquet returns the table as parquet.")
    async def forecast(request: Request, asof: str | None = None, components: str | None = None,
                       store: str | None = None) -> Response:
        bundle = service.bundle  # the bundle this request runs on, even if a reload swaps it meanwhile
        body = await read_body(request, service.max_body_bytes)
        ctype = request.headers.get("content-type", "")
        as_parquet = PARQUET_OUT in request.headers.get("accept", "")
        # Parsing the body and encoding the answer are CPU work too: off the event loop, with
        # the forecast, in one trip to a thread.
        def work() -> Response:
            bars, options = parse_bars(body, ctype)
            if len(bars) > service.max_rows:
                raise RequestError(413, f"body: {len(bars)} bars, more than the limit of {service.max_rows} "
                                        f"(--max-rows); send fewer bars per request")
            at = options.get("asof", asof)
            want = _truthy(options.get("components", components or False), "components")
            preds = predict(bars, bundle, asof=at, source_name="bars")
            if not want:
                preds = preds[[c for c in preds.columns if c not in list_models(bundle)]]
            if service.db is not None and _truthy(store if store is not None else True, "store"):
                import sqlalchemy as sa

                from alphafactory.serving.db import write_predictions
                try:
                    write_predictions(preds, service.db, table=service.table)
                except sa.exc.DBAPIError as e:  # the database's problem, not the request's
                    log.error("serve: writing the forecasts to table %s failed: %s", service.table, e)
                    first = str(e.orig).splitlines()[0] if e.orig is not None else type(e).__name__
                    raise RequestError(503, f"predictions table {service.table!r}: write failed ({first}); "
                                            f"nothing was stored, retry, or send store=false") from e
            if as_parquet:
                buf = io.BytesIO()
                preds.to_parquet(buf, index=False)
                return Response(buf.getvalue(), media_type=PARQUET_OUT)
            return _json({"bundle_sha256": bundle.digest, "bundle_version": bundle.version, "asof": at,
                          "horizons": list(bundle.horizons), "rows": len(preds), "forecasts": records(preds)})

        return await anyio.to_thread.run_sync(work, limiter=limiter)

    @app.get("/v1/forecasts", summary="Rows already in the predictions table (--db)")
    async def forecasts(symbol: str | None = None, since: str | None = None,
                        limit: int = 10_000) -> Response:
        if service.db is None:
            raise RequestError(404, "no predictions table: start alphafactory serve with --db URL")
        if not 1 <= limit <= MAX_READ_ROWS:
            raise RequestError(422, f"limit: got {limit}, expected 1..{MAX_READ_ROWS}")
        symbols = [s for s in (symbol or "").split(",") if s] or None
        at = None
        if since is not None:
            try:
                at = pd.Timestamp(since)
            except (ValueError, TypeError):
                at = None
            if at is None or at is pd.NaT:
                raise RequestError(422, f"since: cannot parse {since!r} as a timestamp; expected e.g. 2013-06-28")
            at = at.tz_convert("UTC").tz_localize(None) if at.tzinfo is not None else at
        from alphafactory.serving.db import read_predictions

        def work() -> list[dict[str, Any]]:
            import sqlalchemy as sa

            try:
                table = read_predictions(service.db, service.table, symbols=symbols, since=at, limit=limit,
                                         engine=service._engine)
            except sa.exc.DBAPIError as e:
                log.error("serve: reading table %s failed: %s", service.table, e)
                first = str(e.orig).splitlines()[0] if e.orig is not None else type(e).__name__
                raise RequestError(503, f"predictions table {service.table!r}: read failed ({first})") from e
            return records(table)

        rows = await anyio.to_thread.run_sync(work, limiter=limiter)
        return _json({"table": service.table, "rows": len(rows), "forecasts": rows})

    @app.post("/v1/reload", summary="Load, verify and swap in a bundle",
              description="Body (optional): {\"models\": \"path/to/bundle\"}; default: reload the current path.")
    async def reload(request: Request) -> Response:
        body = await read_body(request, 1 << 16)
        path = None
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise RequestError(400, f"body: not valid JSON ({e})") from e
            if not isinstance(doc, dict) or set(doc) - {"models"} or not isinstance(doc.get("models", ""), str):
                raise RequestError(422, "body: expected {\"models\": \"path/to/bundle\"} or nothing")
            path = doc.get("models")
        if service.link is not None:  # --workers: the supervisor reloads every worker, this one first
            done = await anyio.to_thread.run_sync(service.link.reload_everywhere, path)
            if not done["ok"]:
                raise RequestError(422, f"reload refused, still serving {done['digest']}: {done['error']}")
            return _json({"status": "reloaded", "bundle_sha256": done["digest"], "previous_sha256": done["previous"],
                          "path": done["path"], "workers": done["workers"]})
        try:
            old, new = await anyio.to_thread.run_sync(service.reload, path)
        except InputError as e:  # BundleError: refused, the old bundle keeps serving
            raise RequestError(422, f"reload refused, still serving {service.bundle.digest}: {e}") from e
        return _json({"status": "reloaded", "bundle_sha256": new.digest, "previous_sha256": old.digest,
                      "path": str(service.path)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(service.bundle), media_type="text/plain; version=0.0.4")

    return _Instrumented(app, service)


class _Instrumented:
    """ASGI wrapper: bearer token check, metrics and one JSON access-log line per request."""

    def __init__(self, app: FastAPI, service: Service) -> None:
        self.app, self.service = app, service
        self.expected = f"Bearer {service.token}".encode() if service.token else None

    def __getattr__(self, name: str) -> Any:  # .openapi(), .routes, ... of the FastAPI app
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status, sent = 500, 0

        async def tracked(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if self.expected is not None and path not in OPEN_ROUTES and not self._authorized(scope):
                await _error(401, "unauthorized: send the token of --token-file as 'Authorization: Bearer <token>'")(
                    scope, receive, tracked)
            else:
                await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 - the app's handler already answered 500 and logged the traceback
            if status == 500 and sent == 0:
                raise
        finally:
            seconds = time.perf_counter() - start
            self.service.metrics.observe(scope.get("method", ""), route, status, seconds)
            client = scope.get("client") or ("", 0)
            line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "client": client[0],
                    "method": scope.get("method"), "path": path, "status": status, "ms": round(seconds * 1e3, 2),
                    "bytes_out": sent, "bundle": self.service.bundle.digest[:12]}
            if self.service.worker is not None:
                line["worker"] = self.service.worker
            access_log.info(json.dumps(line))

    def _authorized(self, scope: dict) -> bool:
        got = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(got, self.expected)


# -- `alphafactory serve` ---------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="bundle", help="bundle directory (default: bundle)")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="predictions table (SQLAlchemy URL, SQLite or PostgreSQL): every forecast is "
                             "upserted there, and GET /v1/forecasts reads it")
    parser.add_argument("--table", default="preds", help="table for --db (default: preds)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    parser.add_argument("--token-file", default=None,
                        help="file holding a bearer token every request but /healthz and /readyz must send")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / (1 << 20),
                        help=f"largest request body in MiB (default: {MAX_BODY_BYTES >> 20})")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS,
                        help=f"most bars in one request (default: {MAX_ROWS})")
    parser.add_argument("--threads", type=int, default=PREDICT_THREADS,
                        help=f"forecasts computed at once per process; more requests queue (default: {PREDICT_THREADS})")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port, each with its own copy of the bundle "
                             "(default: 1); reloads reach every worker (see docs/serve.md)")


def run(args: argparse.Namespace) -> int:
    """`alphafactory serve`: load and verify the bundle, then serve it until SIGINT/SIGTERM
    (``--workers N``: N processes, see :mod:`alphafactory.serving.workers`)."""
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise InputError(f"--token-file: cannot read {args.token_file} ({e.strerror})") from e
        if not token:
            raise InputError(f"--token-file: {args.token_file} is empty; expected a bearer token")
    if args.max_rows < 1 or args.max_body_mb <= 0 or args.threads < 1 or args.workers < 1:
        raise InputError("--max-rows, --max-body-mb, --threads and --workers must be positive")
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: listening on %s without --token-file: anyone who reaches it can forecast "
                    "and reload", args.host)
    options = {"models": str(args.models), "db": args.db, "table": args.table,
               "max_body_bytes": int(args.max_body_mb * (1 << 20)), "max_rows": args.max_rows,
               "token": token, "threads": args.threads}
    if args.workers == 1:
        service = Service(**options)  # raises BundleError before anything listens
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose
    # socket says TCP (base_events._set_nodelay). Without it every answer on a kept-alive
    # connection after the first waited ~40 ms (Nagle holding the body behind the headers until
    # the client's delayed ACK): 44 ms for GET /healthz, measured (docs/serve.md, "Load").
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))  # bound, not listening: nothing listens before the bundle is verified
    except OSError as e:
        raise InputError(f"--host/--port: cannot listen on {args.host}:{args.port} ({e.strerror})") from e
    host, port = sock.getsockname()[:2]
    if args.workers > 1:
        supervisor = Supervisor(args.workers, options, sock, worker_main)
        digest = supervisor.start()  # every worker verified the bundle, or a BundleError here
        try:
            _listen(sock, args)
        except InputError:
            supervisor.stop()
            raise
        log.info("serve: %d workers, supervisor pid %d (SIGHUP to it reloads them all); %s (sha256 %s) on http://%s:%d",
                 args.workers, os.getpid(), args.models, digest[:12], host, port)
        return supervisor.run()
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=service.reload_logged, daemon=True).start())
    _listen(sock, args)
    log.info("serve: %s (sha256 %s) on http://%s:%d", service.path, service.bundle.digest[:12], host, port)
    serve_socket(service, sock)
    return 0


def _listen(sock: socket.socket, args: argparse.Namespace) -> None:
    """Listen on the bound ``sock`` once the bundle is verified, before the "on http://..."
    line is logged: a client that connects as soon as it reads that line waits in the backlog
    until uvicorn (or a worker) accepts it, instead of being refused while the server starts
    (uvicorn's own listen() later sets the same backlog again)."""
    try:
        sock.listen(BACKLOG)
    except OSError as e:
        raise InputError(f"--host/--port: cannot listen on {args.host}:{args.port} ({e.strerror})") from e


def freeze_heap(collect_frozen: bool = False) -> None:
    """Move every object alive now (the modules, the bundle's models) out of the cyclic garbage
    collector's reach (``gc.freeze``), after a full collection. Python's oldest-generation
    collection otherwise walks them every few hundred requests and stops every thread for it:
    measured, 128 ms once in 300 forecasts on a loaded machine, which is the p99 of a busy
    server. Reference counting still frees what requests allocate. ``collect_frozen`` (after a
    reload): first give the collector back what was frozen, so that the old bundle's reference
    cycles are freed too, at the price of that one collection."""
    if collect_frozen:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def serve_socket(service: Service, sock: socket.socket) -> None:
    """Serve ``service`` on the bound socket ``sock`` until SIGINT/SIGTERM (uvicorn)."""
    import uvicorn

    config = uvicorn.Config(create_app(service), interface="asgi3", lifespan="on", log_config=None, access_log=False,
                            timeout_keep_alive=30)
    server = uvicorn.Server(config)
    freeze_heap()
    server.run(sockets=[sock])


def worker_main(index: int, options: dict[str, Any], sock: socket.socket, conn: Connection) -> None:
    """One worker process: load and verify the bundle, report, wait for "go", then serve."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads go through the supervisor (one for all)
    link = Link(conn)
    try:
        service = Service(**options, worker=index, link=link)
    except Exception as e:  # noqa: BLE001 - reported to the supervisor, which prints it and exits 2
        conn.send(("failed", isinstance(e, USER_ERRORS), f"{e}" if isinstance(e, USER_ERRORS)
                   else f"{type(e).__name__}: {e}"))
        if not isinstance(e, USER_ERRORS):
            log.exception("serve: worker %d failed to start", index)
        return
    conn.send(("ready", service.bundle.digest))
    try:
        go = conn.recv()
    except EOFError:
        return
    if go[0] != "go":
        return
    link.start(service)
    serve_socket(service, sock)
