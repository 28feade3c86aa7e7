"""``alphafactory serve --workers N``: N server processes sharing one port, and their supervisor.

One process forecasts ~40 small requests a second whatever its thread count: ``predict`` is
mostly Python and pandas code that holds the GIL (measured in docs/serve.md). Several processes
forecast in parallel. The supervisor (the process ``alphafactory serve`` started) binds the port,
then starts N workers (``spawn``: fresh interpreters, none inherits another's library threads),
each of which loads and verifies the bundle itself. It opens the port to them only once every
worker has verified it: a bad bundle is still one ``error:`` line and exit status 2, and nothing
ever listened. The kernel hands each new connection to one of the workers.

Reload stays one operation for the whole server: ``POST /v1/reload`` on any worker, or SIGHUP to
the supervisor, reloads every worker in turn (each loads and verifies the bundle, then swaps its
reference, as one process does). The worker that took the request goes first; if it refuses the
bundle, no other worker is asked, and all keep serving the old one. The answer comes once every
worker has swapped. A worker that exits unexpectedly is replaced, with the bundle serving then.

Each worker keeps its own ``/metrics`` counters (a scrape reads the worker that takes it; the
``alphafactory_worker_info`` gauge says which), and its own access-log lines (``"worker": k``).

Messages on each worker's pipe (tuples, first item the kind)::

    worker -> supervisor   ("ready", digest) | ("failed", user_error, message)
                           ("reload", request_id, path)      a POST /v1/reload to run everywhere
                           ("reloaded", request_id, ok, digest_or_error, previous_digest)
    supervisor -> worker   ("go",)                            start serving on the shared socket
                           ("reload", request_id, path)       reload yourself, answer "reloaded"
                           ("done", request_id, result)       the answer to a worker's "reload"
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from alphafactory.errors import InputError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 600  # a worker that has not loaded its bundle by then is stopped
RELOAD_TIMEOUT_S = 600  # one worker's load and verification, at most
STOP_TIMEOUT_S = 30  # graceful shutdown (requests in flight finish), then SIGKILL


class Link:
    """A worker's end of its pipe: the supervisor's reload commands, run in a thread, and the
    worker's own reload requests, answered by the supervisor once every worker has reloaded."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._ids = itertools.count()
        self.service: Any = None

    def send(self, message: tuple) -> None:
        with self._send_lock:  # the listener thread and request threads both send
            self.conn.send(message)

    def start(self, service: Any) -> None:
        self.service = service
        threading.Thread(target=self._listen, name="supervisor-link", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the supervisor is gone: nothing more to take orders from
                return
            if message[0] == "reload":
                _, rid, path = message
                try:
                    old, new = self.service.reload(path)
                    self.send(("reloaded", rid, True, new.digest, old.digest))
                except Exception as e:  # noqa: BLE001 - refused: reported to the supervisor, old bundle kept
                    self.send(("reloaded", rid, False, str(e), self.service.bundle.digest))
            elif message[0] == "done":
                _, rid, result = message
                event, box = self._waiting.pop(rid)
                box.append(result)
                event.set()

    def reload_everywhere(self, path: str | None) -> dict[str, Any]:
        """Ask the supervisor to reload every worker (this one first); block until it answers
        ``{"ok": bool, "digest": new or current, "previous": ..., "error": why, "workers": n}``."""
        rid = next(self._ids)
        event, box = threading.Event(), []
        self._waiting[rid] = (event, box)
        self.send(("reload", rid, path))
        if not event.wait(RELOAD_TIMEOUT_S * 4):
            self._waiting.pop(rid, None)
            raise TimeoutError("the supervisor did not answer the reload")
        return box[0]


class Supervisor:
    """Starts, watches, reloads and stops the worker processes."""

    def __init__(self, workers: int, options: dict[str, Any], sock: socket.socket,
                 target: Callable[[int, dict[str, Any], socket.socket, Connection], None]) -> None:
        """``target(index, options, sock, conn)``: a worker's main (``app.worker_main``: load the
        bundle, report "ready" or "failed" on ``conn``, wait for "go", serve on ``sock``)."""
        self.n, self.options, self.sock, self.target = workers, dict(options), sock, target
        self.ctx = mp.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Connection] = {}
        self.pending: deque[tuple[int, tuple]] = deque()  # messages read while waiting for another
        self.stopping = False
        self.hup = False
        self._rids = itertools.count()

    # -- starting ---------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=self.target, args=(index, self.options, self.sock, child),
                                name=f"alphafactory-serve-{index}", daemon=False)
        proc.start()
        child.close()
        self.procs[index], self.conns[index] = proc, parent

    def _await_ready(self, index: int) -> str:
        """The digest worker ``index`` verified; raises InputError (its message) if it failed."""
        conn, proc = self.conns[index], self.procs[index]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not conn.poll(0.2):
            if not proc.is_alive():
                raise InputError(f"serve: worker {index} exited with status {proc.exitcode} before "
                                 "loading the bundle (see the log above)")
            if time.monotonic() > deadline:
                raise InputError(f"serve: worker {index} did not load the bundle in {READY_TIMEOUT_S} s")
        try:
            message = conn.recv()
        except EOFError:
            proc.join(5)
            raise InputError(f"serve: worker {index} exited with status {proc.exitcode} before "
                             "loading the bundle (see the log above)") from None
        if message[0] == "failed":
            if message[1]:
                raise InputError(message[2])
            raise RuntimeError(f"serve: worker {index} failed to start: {message[2]}")
        return message[1]

    def start(self) -> str:
        """Start every worker; once all verified the bundle, let them serve. Returns its digest.
        On any failure the workers are stopped and the error propagates (nothing listened)."""
        try:
            for i in range(self.n):
                self._spawn(i)
            digests = {self._await_ready(i) for i in range(self.n)}
        except BaseException:
            self.stop()
            raise
        if len(digests) != 1:  # the files changed while the workers loaded them
            self.stop()
            raise InputError(f"{self.options['models']}: the workers loaded different bundles "
                             f"{sorted(d[:12] for d in digests)}; the bundle changed during startup")
        for conn in self.conns.values():
            conn.send(("go",))
        return digests.pop()

    # -- running ----------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGINT/SIGTERM: answer reload requests, reload on SIGHUP, replace a
        worker that exits."""
        def stop(*_: Any) -> None:
            self.stopping = True

        def hup(*_: Any) -> None:
            self.hup = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        try:
            while not self.stopping:
                if self.hup:
                    self.hup = False
                    result = self.reload_all(None)
                    if not result["ok"]:
                        log.error("serve: reload refused, still serving %s: %s", result["digest"][:12],
                                  result["error"])
                while self.pending and not self.stopping:
                    self._handle(*self.pending.popleft())
                waitables = {**{c: ("conn", i) for i, c in self.conns.items()},
                             **{p.sentinel: ("exit", i) for i, p in self.procs.items()}}
                for ready in wait(list(waitables), timeout=0.5):
                    kind, i = waitables[ready]
                    if kind == "conn":
                        try:
                            self._handle(i, self.conns[i].recv())
                        except (EOFError, OSError):
                            pass  # the worker is exiting: its sentinel says so next
                    elif not self.stopping:
                        self._replace(i)
        finally:
            self.stop()
        return 0

    def _handle(self, index: int, message: tuple) -> None:
        if message[0] == "reload":
            _, rid, path = message
            result = self.reload_all(path, first=index)
            try:
                self.conns[index].send(("done", rid, result))
            except (OSError, KeyError):
                pass  # the worker that asked has gone; the others reloaded
        # anything else ("reloaded" after a timeout) has no one waiting for it

    def _replace(self, index: int) -> None:
        proc = self.procs[index]
        proc.join(1)
        log.error("serve: worker %d (pid %s) exited with status %s; starting another", index, proc.pid,
                  proc.exitcode)
        self.conns.pop(index).close()
        self._spawn(index)
        try:
            self._await_ready(index)
        except (InputError, RuntimeError) as e:  # e.g. the bundle's files changed since: keep going
            log.error("serve: worker %d could not be replaced: %s", index, e)
            self.procs.pop(index).join(1)
            self.conns.pop(index).close()
            return
        self.conns[index].send(("go",))

    def reload_all(self, path: str | None, first: int | None = None) -> dict[str, Any]:
        """Reload every worker, ``first`` first; stop at the first refusal (no later worker is
        asked, so the others keep the bundle they serve)."""
        order = sorted(self.conns, key=lambda i: (i != first, i))
        target = path if path is not None else self.options["models"]
        result: dict[str, Any] = {"ok": True, "workers": len(order), "path": str(target)}
        for n, i in enumerate(order):
            rid = next(self._rids)
            try:
                self.conns[i].send(("reload", rid, str(target)))
                reply = self._reply(i, rid)
            except (EOFError, OSError, TimeoutError) as e:
                log.error("serve: worker %d did not reload (%s)", i, e)
                continue  # it is exiting: its replacement loads the new path (options["models"])
            _, _, ok, what, previous = reply
            if not ok:
                result.update(ok=False, error=what, digest=previous)
                if n:  # a refusal after some workers swapped: the files changed meanwhile
                    result["error"] += f" (worker {i}; {n} of {len(order)} workers had already reloaded)"
                return result
            result.update(digest=what, previous=result.get("previous", previous))
            if n == 0:
                self.options["models"] = str(target)  # replacements and SIGHUP load this path now
        return result

    def _reply(self, index: int, rid: int) -> tuple:
        conn = self.conns[index]
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while True:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no answer in {RELOAD_TIMEOUT_S} s")
            message = conn.recv()
            if message[0] == "reloaded" and message[1] == rid:
                return message
            self.pending.append((index, message))  # e.g. this worker's own reload request

    # -- stopping ---------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM every worker (uvicorn finishes the requests in flight), then wait; SIGKILL
        one that is still running after STOP_TIMEOUT_S."""
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns.values():
            conn.close()
        self.procs.clear()
        self.conns.clear()
