"""Where the stages that fan out run their independent pieces of work: in process, on a Dask
``LocalCluster``, or on an existing Dask cluster (the ``compute`` section of params.yaml).

The stages fan out the same way whatever the choice (joblib's ``Parallel``; under a cluster its
Dask backend)::

    with fan_out(section(params, "compute", ComputeConfig)) as fan:
        results = fan.map(fit_one_fold, folds)   # results[i] is fit_one_fold(folds[i])

* ``cluster: null`` (the default): a plain loop in this process; Dask is not imported. A
  caller that splits its threads between pieces of work (``train.scope: per_symbol``: a model
  of T threads per fit runs T symbols at once, one thread each) asks ``map(..., processes=T)``
  for that many local worker processes instead.
* ``cluster: local``: a ``LocalCluster`` of ``workers`` processes of ``threads_per_worker``
  threads each, started for the stage and closed after it.
* ``cluster: tcp://host:8786``: the scheduler of an existing cluster (``dask scheduler`` /
  ``dask worker``); a scheduler that does not answer within ``connect_timeout`` seconds is a
  one-line :class:`~alphafactory.errors.ConfigError` naming the address.

Results are those of the in-process loop, byte for byte, whatever the number of workers: each
work item carries its own seed (never one drawn from a shared generator in completion order),
``map`` returns results in the order of its items, the threads of a model are its own params
(``num_threads``, ``neural.trainer.threads``), not the worker's, and BLAS runs on one thread in
every piece of work, in process too (:func:`single_threaded_blas`). Byte-identical assumes the
workers have the driver's CPU type and library builds: another instruction set can change the
last bits of BLAS-based fits (ridge). A worker that dies
mid-run is replaced (``dask worker`` runs each worker under a nanny that restarts it) and the
scheduler reruns its unfinished tasks elsewhere: every task carries its inputs (nothing is
scattered to one worker, whose loss would lose data the scheduler cannot resend), so a lost
worker loses nothing but time.

What a worker needs: the same environment (the package importable, ``PYTHONPATH`` or an
install of the same version) and, for work that writes files (the ``cv`` stage's scratch fold
models), a writable temporary directory; fitted models and tables come back to the driver as
results, and the driver writes every output, so workers on other machines need no shared
filesystem.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from alphafactory.config import Interval
from alphafactory.errors import ConfigError
from alphafactory.progress import progress

T = TypeVar("T")
R = TypeVar("R")
LOCAL = "local"
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s:/]+:\d{1,5}$")


@dataclass(frozen=True)
class ComputeConfig:
    """The ``compute`` section of params.yaml."""

    cluster: str | None = None  # null: in process | local: a LocalCluster | tcp://host:port
    workers: Annotated[int, Interval(ge=1)] = 2  # local: worker processes
    threads_per_worker: Annotated[int, Interval(ge=1)] = 1  # local: tasks each worker runs at once
    connect_timeout: Annotated[float, Interval(gt=0)] = 10.0  # seconds to reach a scheduler address

    def validate(self) -> None:
        if self.cluster is not None and self.cluster != LOCAL and not _ADDRESS.match(self.cluster):
            raise ConfigError(f"compute.cluster: got {self.cluster!r}, expected null (in process), "
                              f"{LOCAL!r} or a scheduler address such as 'tcp://10.0.0.5:8786'")


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS (numpy's OpenBLAS, and any other loaded) on one thread inside the block. A matrix
    product's last bits depend on how many threads split its sums, and a Dask worker's BLAS runs
    on one (the nanny sets ``OMP_NUM_THREADS=1``) while the driver's runs on every core: every
    piece of work runs single-threaded, wherever it runs, so ridge (and any model built on
    numpy products) gives the same bytes in process and on a cluster."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _call(job: tuple[Callable[[Any], Any], Any]) -> Any:
    """Run one work item: ``job`` is ``(fn, item)``. A tuple is not weak-referenceable, so
    joblib's Dask backend sends it inside the task instead of scattering it to one worker."""
    fn, item = job
    with single_threaded_blas():
        return fn(item)


class FanOut:
    """``map(fn, items)``: ``[fn(item) for item in items]``, in process or on a Dask cluster.
    Connects to the cluster (or starts the ``local`` one) on the first ``map`` of more than one
    item, so a stage with nothing to fan out (``train.scope: pooled``) never does."""

    def __init__(self, cfg: ComputeConfig | None = None, stack: contextlib.ExitStack | None = None) -> None:
        self.cfg = cfg if cfg is not None and cfg.cluster is not None else None  # None: in process
        self._stack = stack
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The dask.distributed Client (connecting on first use); None in process."""
        if self.cfg is None:
            return None
        if self._client is None:
            assert self._stack is not None, "a clustered FanOut comes from fan_out()"
            self._client = _connect(self.cfg, self._stack)
        return self._client

    @property
    def workers(self) -> int:
        """Workers the pieces of work are spread over (1 in process)."""
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, desc: str | None = None,
            unit: str = "item", processes: int = 1) -> list[R]:
        """``fn`` applied to each item, results in the order of ``items`` (a progress bar
        ``desc`` over them, if given). ``fn`` must be a module-level function and the items
        picklable (they travel to the workers); an exception raised by ``fn`` is raised here,
        with its type. processes: in process (``cluster: null``), run the items on that many
        local worker processes (joblib's loky) instead of one after the other, for a caller that
        has split its threads between them (the per-symbol fits); ignored on a cluster."""
        items = list(items)
        if self.cfg is None and processes > 1 and len(items) > 1:
            return _local_map(fn, items, min(processes, len(items)), desc, unit)
        if self.cfg is None or len(items) <= 1:
            return [_call((fn, x)) for x in (progress(items, desc=desc, unit=unit) if desc else items)]
        import joblib

        # batch_size=1: one task per item, so the scheduler balances them and a lost worker
        # costs only its own items; pre_dispatch="all": every item is queued at once.
        with joblib.parallel_config(backend="dask", client=self.client, wait_for_workers_timeout=60):
            par = joblib.Parallel(n_jobs=-1, batch_size=1, pre_dispatch="all", return_as="generator")
            results = par(joblib.delayed(_call)((fn, x)) for x in items)
            if desc:
                results = progress(results, desc=f"{desc} ({self.workers} workers)", total=len(items), unit=unit)
            return list(results)


def _local_map(fn: Callable[[T], R], items: list[T], processes: int, desc: str | None, unit: str) -> list[R]:
    """``[fn(x) for x in items]`` on ``processes`` loky worker processes of this machine (kept
    warm between calls, so a stage pays their start once), results in the order of ``items``."""
    import joblib

    # loky, not fork: a forked child of a process whose OpenMP pool has started can deadlock
    par = joblib.Parallel(n_jobs=processes, backend="loky", batch_size=1, pre_dispatch="all",
                          return_as="generator")
    results = par(joblib.delayed(_call)((fn, x)) for x in items)
    if desc:
        results = progress(results, desc=f"{desc} ({processes} processes)", total=len(items), unit=unit)
    return list(results)


def _connect(cfg: ComputeConfig, stack: contextlib.ExitStack) -> Any:
    from dask.distributed import Client, LocalCluster

    # the stage's log is about its work: Dask's own INFO lines (dashboard hints, workers
    # retired at close) stay out of it; its warnings (a worker lost) stay in
    logging.getLogger("distributed").setLevel(logging.WARNING)

    if cfg.cluster == LOCAL:
        cluster = stack.enter_context(LocalCluster(n_workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                                                   processes=True, dashboard_address=None))
        return stack.enter_context(Client(cluster, set_as_default=False))
    try:
        client = Client(cfg.cluster, timeout=cfg.connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:  # distributed raises OSError (or TimeoutError) on no answer
        raise ConfigError(f"compute.cluster: no Dask scheduler answered at {cfg.cluster} within "
                          f"{cfg.connect_timeout:g} s ({type(e).__name__}); expected a running `dask scheduler` "
                          "there, or compute.cluster: null to run in process") from None
    return stack.enter_context(client)


@contextlib.contextmanager
def fan_out(cfg: ComputeConfig | None = None) -> Iterator[FanOut]:
    """A :class:`FanOut` for the duration of a stage: in process for ``cfg`` None or
    ``cluster: null``; else connected to (or, ``local``, running) a Dask cluster when it first
    has work for it, closed on exit."""
    if cfg is None or cfg.cluster is None:
        yield FanOut()
        return
    with contextlib.ExitStack() as stack:
        yield FanOut(cfg, stack)

