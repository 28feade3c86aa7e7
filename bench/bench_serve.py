"""Benchmark ``alphafactory serve`` under load: concurrent clients on loopback for a fixed time.

    python bench/bench_serve.py --bundle bundle                  # the pipeline's bundle (make run)
    python bench/bench_serve.py --bundle bundle --duration 10    # shorter, on a busy machine
    python bench/bench_serve.py --bundle bundle --workers 2      # serve --workers 2
    python bench/bench_serve.py                                  # trains a small bundle first

The server runs in a subprocess (``alphafactory serve --port 0`` on 127.0.0.1: this script never
talks to anything but loopback). Two scenarios, each for ``--duration`` seconds:

- ``small``: ``--clients`` clients (default 8), each sending, as fast as it is answered, one
  request of ``--small-symbols`` symbols x ``history_bars`` raw bars (the bars one forecast from
  the last bar reads; fewer would change the long-memory features). A bundle with
  cross-sectional features needs at least 2 symbols per request (ranks across one symbol do not
  exist); then 2 is used and the table says so.
- ``500 symbols``: ``--big-clients`` clients (default 1) sending 500 symbols x ``history_bars``.

Bodies are parquet (``--format json`` sends JSON records). Synthetic bars (the bundle's models
are pooled, so symbols it never saw are fine). Prints a markdown table: requests, throughput,
p50/p99/max latency, errors (any status but 200, or a dropped connection), and the server's
resident memory (with ``--workers N``: summed over the supervisor and its workers) after the warm-up, at its peak and at the end, and the same request's ``predict``
timed in this process before the server starts (median; no HTTP, one call at a time), and the
server's CPU time per answered request (user + system, all its processes): on a machine shared
with other work, the figure that load changes least. Exits 1 if a target is missed:
p99 <= 50 ms for ``small`` at 8 clients, p99 <= 1 s for 500 symbols, no error, and memory
flat: the server's peak RSS in the last third of a run within 10% of its peak in the first third
(one request's own allocations come and go, so the peaks are compared, not two samples).

The clients share the cores with the server, so by default (``--client raw``) one thread drives
every keep-alive connection with a request encoded once (~0.3 ms of CPU a request, printed as
"client CPU"); ``--client httpx`` runs one httpx client per thread instead (~4 ms a request).
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as `make bench`: idle OpenMP threads sleep
ROOT = Path(__file__).resolve().parents[1]
MAX_CLIENTS, MAX_DURATION_S = 64, 600  # bounded load, whatever the arguments say
TARGET_SMALL_P99_S, TARGET_BIG_P99_S, TARGET_MEM_GROWTH = 0.050, 1.0, 0.10


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the workers of ``--workers N``)."""
    total = 0
    for p in (pid, *children(pid)):
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:  # a worker that just exited
            continue
        total += int(m.group(1)) * 1024 if m else 0
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (the workers), seconds."""
    total = 0
    for p in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_server(bundle: Path, log_path: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "alphafactory.cli", "serve", "--models", str(bundle),
                                 "--host", "127.0.0.1", "--port", "0", *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"server did not start:\n{log_path.read_text()}")


def body_of(bars, fmt: str) -> tuple[bytes, dict[str, str]]:
    if fmt == "json":
        import json

        recs = bars.assign(timestamp=bars["timestamp"].astype(str)).to_dict("records")
        return json.dumps(recs).encode(), {"content-type": "application/json"}
    buf = io.BytesIO()
    bars.to_parquet(buf, index=False)
    return buf.getvalue(), {"content-type": "application/vnd.apache.parquet"}


def load(port: int, body: bytes, headers: dict[str, str], clients: int, duration: float, pid: int,
         client: str = "raw") -> dict:
    """``clients`` keep-alive connections posting ``body`` back to back for ``duration`` seconds.

    ``client="raw"`` (the default) drives every connection from one thread with ``selectors``
    and a request encoded once: the load generator shares the 2 cores with the server, so it
    must cost the server as little CPU as it can (about 0.1 ms a request against 1-2 ms for
    an httpx client per thread, whose threads also queue on this process's GIL, which
    shows as server latency). ``client="httpx"`` is the plain client, for comparison.
    """
    lat: list[float] = []
    errors: list[str] = []
    mem: list[int] = []  # the server's RSS every 0.5 s
    stop = time.monotonic() + duration
    cpu0, own0 = cpu_seconds(pid), time.process_time()
    if client == "httpx":
        threads = [threading.Thread(target=_httpx_client, args=(port, body, headers, stop, lat, errors))
                   for _ in range(clients)]
    else:
        threads = [threading.Thread(target=_raw_clients, args=(port, body, headers, clients, stop, lat, errors))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        mem.append(rss_bytes(pid))
        time.sleep(0.5)
    for t in threads:
        t.join()
    cpu, own = cpu_seconds(pid) - cpu0, time.process_time() - own0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
    return {"requests": len(lat), "rps": len(lat) / duration, "p50": q(0.50), "p99": q(0.99),
            "max": lat[-1] if lat else float("nan"), "mean": statistics.fmean(lat) if lat else float("nan"),
            "cpu_ms": 1e3 * cpu / max(1, len(lat)), "client_cpu_ms": 1e3 * own / max(1, len(lat)),
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "mem_start": mem[0] if mem else 0, "mem_max": max(mem, default=0), "mem_end": mem[-1] if mem else 0,
            # a request's own allocations come and go: compare the peaks of the first and last thirds
            "peak_first": max(mem[:max(1, len(mem) // 3)], default=0), "peak_last": max(mem[-max(1, len(mem) // 3):], default=0)}


def _httpx_client(port: int, body: bytes, headers: dict[str, str], stop: float, lat: list, errors: list) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as h:
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                r = h.post("/v1/forecast", content=body, headers=headers)
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")


def _raw_clients(port: int, body: bytes, headers: dict[str, str], clients: int, stop: float,
                 lat: list, errors: list) -> None:
    """``clients`` HTTP/1.1 keep-alive connections, one request in flight on each, from one thread.

    A response is complete when its headers and ``content-length`` bytes of body have come; a
    status other than 200, a closed connection or a response without a length is an error (and
    the connection is opened again)."""
    import selectors
    import socket

    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /v1/forecast HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    sel = selectors.DefaultSelector()

    def send(sock: socket.socket | None) -> None:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(sock, selectors.EVENT_READ, [b"", 0.0])
        state = sel.get_key(sock).data
        state[0], state[1] = b"", time.perf_counter()
        sock.sendall(request)

    def drop(sock: socket.socket, why: str) -> None:
        errors.append(why)
        sel.unregister(sock)
        sock.close()
        if time.monotonic() < stop:
            send(None)

    for _ in range(clients):
        send(None)
    while sel.get_map():
        if time.monotonic() > stop + 60:  # a request unanswered for a minute after the end
            errors.extend(["no answer within 60 s"] * len(sel.get_map()))
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()
            break
        for key, _ in sel.select(timeout=1.0):
            sock, state = key.fileobj, key.data
            chunk = sock.recv(1 << 20)
            if not chunk:
                drop(sock, "connection closed by the server")
                continue
            state[0] += chunk
            buf = state[0]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            header = buf[:end].decode("latin-1").lower()
            m = re.search(r"\r\ncontent-length:\s*(\d+)", header)
            if m is None:
                drop(sock, f"response without content-length: {header[:200]!r}")
                continue
            if len(buf) < end + 4 + int(m.group(1)):
                continue
            lat.append(time.perf_counter() - state[1])
            status = header[9:12]
            if status != "200":
                errors.append(f"{status} {buf[end + 4:end + 204]!r}")
            if time.monotonic() < stop and "\r\nconnection: close" not in header:
                send(sock)
            else:
                sel.unregister(sock)
                sock.close()
                if time.monotonic() < stop:
                    send(None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle directory (default: train a small one)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per scenario (default 30)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients, small requests (default 8)")
    ap.add_argument("--big-clients", type=int, default=1, help="concurrent clients, 500-symbol requests (default 1)")
    ap.add_argument("--small-symbols", type=int, default=1, help="symbols per small request (default 1)")
    ap.add_argument("--big-symbols", type=int, default=500, help="symbols per big request (default 500)")
    ap.add_argument("--format", choices=("parquet", "json"), default="parquet", help="request body format")
    ap.add_argument("--workers", type=int, default=1, help="server processes (serve --workers; default 1)")
    ap.add_argument("--threads", type=int, default=None, help="forecasting threads per process (serve --threads)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator: raw keep-alive sockets from one thread (default; ~0.1 ms CPU a "
                         "request) or one httpx client per thread (several times that)")
    args = ap.parse_args()
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.big_clients <= MAX_CLIENTS):
        ap.error(f"--clients, --big-clients: 1..{MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION_S:
        ap.error(f"--duration: (0, {MAX_DURATION_S}] seconds")
    sys.path.insert(0, str(ROOT / "src"))
    from alphafactory.data.synthetic import SyntheticConfig, make_synthetic
    from alphafactory.serving.inference import history_bars, load_bundle, predict

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    if args.bundle is None:
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_predict import train_bundle

        bundle_path = train_bundle(tmp / "proj")
    else:
        bundle_path = Path(args.bundle)
    bundle = load_bundle(bundle_path)
    n_bars = history_bars(bundle)
    small = args.small_symbols
    note = ""
    if "cross_sectional" in bundle.features.groups and small < 2:
        small, note = 2, " (the bundle has cross-sectional features: 2 symbols is the smallest request)"
    bars, _ = make_synthetic(SyntheticConfig(symbols=max(args.big_symbols, small), bars=n_bars, seed=11))
    syms = sorted(bars["symbol"].unique())
    # The same requests' predict() in this process, before the server starts (warm, no HTTP, one
    # at a time): what the server's forecasting threads each spend per request.
    logging.getLogger("alphafactory.serving.inference").setLevel(logging.ERROR)  # unseen-symbol warnings
    inproc = {}
    for n_sym, repeats in ((small, 30), (args.big_symbols, 5)):
        part = bars[bars["symbol"].isin(syms[:n_sym])]
        predict(part, bundle)  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            predict(part, bundle)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        inproc[n_sym] = (statistics.median(times), statistics.median(cpu))
    extra = ["--workers", str(args.workers)] + (["--threads", str(args.threads)] if args.threads else [])
    proc, port = start_server(bundle_path, tmp / "serve.log", extra)
    rows = []
    try:
        for label, n_sym, clients in ((f"small: {small} symbol(s)", small, args.clients),
                                      (f"{args.big_symbols} symbols", args.big_symbols, args.big_clients)):
            part = bars[bars["symbol"].isin(syms[:n_sym])]
            body, headers = body_of(part, args.format)
            load(port, body, headers, clients, min(3.0, args.duration), proc.pid, args.client)  # warm-up
            res = load(port, body, headers, clients, args.duration, proc.pid, args.client)
            rows.append((label, n_sym, clients, len(body), res))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    la = os.getloadavg()
    print(f"\n### alphafactory serve: {args.duration:.0f} s per scenario, {n_bars} bars per symbol "
          f"(history_bars), {args.format} bodies, {args.workers} server worker(s), {args.client} client, "
          f"{os.cpu_count()} cores, load average "
          f"{la[0]:.1f} {la[1]:.1f} {la[2]:.1f}{note}\n")
    print("| scenario | clients | body | requests | req/s | p50 ms | p99 ms | max ms | errors | RSS MiB start / peak / end "
          "| server CPU ms/request | client CPU ms/request | predict in-process ms (CPU ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    failed = []
    for (label, n_sym, clients, size, r), target in zip(rows, (TARGET_SMALL_P99_S, TARGET_BIG_P99_S), strict=True):
        mb = [r[k] / 2**20 for k in ("mem_start", "mem_max", "mem_end")]
        print(f"| {label} | {clients} | {size / 1024:.0f} KiB | {r['requests']} | {r['rps']:.1f} | {r['p50'] * 1e3:.1f} | "
              f"{r['p99'] * 1e3:.1f} | {r['max'] * 1e3:.1f} | {r['errors']} | {mb[0]:.0f} / {mb[1]:.0f} / {mb[2]:.0f} | "
              f"{r['cpu_ms']:.1f} | {r['client_cpu_ms']:.2f} | {inproc[n_sym][0] * 1e3:.1f} ({inproc[n_sym][1] * 1e3:.1f}) |")
        if r["p99"] > target:
            failed.append(f"{label}: p99 {r['p99'] * 1e3:.0f} ms > {target * 1e3:.0f} ms")
        if r["errors"]:
            failed.append(f"{label}: {r['errors']} errors, e.g. {r['first_error']}")
        if r["peak_first"] and r["peak_last"] > (1 + TARGET_MEM_GROWTH) * r["peak_first"]:
            failed.append(f"{label}: memory grew: peak {r['peak_first'] / 2**20:.0f} MiB in the first third of the "
                          f"run, {r['peak_last'] / 2**20:.0f} MiB in the last")
    for f in failed:
        print(f"target missed: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
