"""bench/bench_serve.py's load generator against a stdlib HTTP server on loopback: every answer
is counted once, non-200 answers and dropped connections are errors, ``Connection: close`` is
followed by a new connection, and both clients agree."""
from __future__ import annotations

import http.server
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_serve  # noqa: E402


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    mode = "ok"
    seen: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append(body)
        n = len(type(self).seen)
        if self.mode == "drop" and n % 4 == 0:
            self.close_connection = True  # no answer at all: the client sees the socket close
            return
        status = 422 if self.mode == "errors" and n % 3 == 0 else 200
        payload = b'{"rows": %d}' % len(body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        if self.mode == "close":
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    def start(mode: str):
        handler = type("H", (_Handler,), {"mode": mode, "seen": []})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return srv, handler

    started: list = []
    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def _run(port: int, client: str, clients: int = 3, seconds: float = 0.6) -> tuple[list, list]:
    lat: list[float] = []
    errors: list[str] = []
    body, headers = b"x" * 5000, {"content-type": "application/octet-stream"}
    stop = time.monotonic() + seconds
    if client == "raw":
        bench_serve._raw_clients(port, body, headers, clients, stop, lat, errors)
    else:
        ts = [threading.Thread(target=bench_serve._httpx_client, args=(port, body, headers, stop, lat, errors))
              for _ in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return lat, errors


@pytest.mark.parametrize("client", ["raw", "httpx"])
def test_every_answer_counted_once(server, client):
    srv, handler = server("ok")
    lat, errors = _run(srv.server_address[1], client)
    assert errors == []
    assert len(lat) > 10
    assert len(lat) == len(handler.seen)  # one latency per request the server answered
    assert all(b == b"x" * 5000 for b in handler.seen)  # the whole body, every time
    assert all(0 < x < 5 for x in lat)


def test_raw_client_counts_statuses_closes_and_drops(server):
    srv, handler = server("errors")
    lat, errors = _run(srv.server_address[1], "raw")
    assert len(lat) == len(handler.seen)
    assert len(errors) == len(handler.seen) // 3 and all(e.startswith("422 ") for e in errors)

    srv, handler = server("close")  # Connection: close after each answer: a new connection, no error
    lat, errors = _run(srv.server_address[1], "raw")
    assert errors == [] and len(lat) == len(handler.seen) > 10

    srv, handler = server("drop")  # every 4th request gets no answer: an error, then a new connection
    lat, errors = _run(srv.server_address[1], "raw")
    assert len(errors) == len(handler.seen) // 4 > 0
    assert set(errors) == {"connection closed by the server"}
    assert len(lat) + len(errors) == len(handler.seen)
