"""Line evaluation spread over worker processes or a Dask cluster (DESIGN.md section 2).

A parametric search asks for K line points at a time (its sweep fronts and seeds). Each
point's interval and selection depend on that point alone, so a batch can be cut into
chunks evaluated anywhere and put back together in order: the search sees the same pieces
whichever executor ran them, and finds the same truncation sets and p-values.

Two executors, one interface (a :class:`~medsi.si.LineEvaluator` whose ``evaluate`` is
distributed; ``select``, ``score_map`` and ``patterns`` stay in the calling process):

* :class:`ProcessLineEvaluator`: local worker processes (``spawn``), each holding its own
  float64 copy of the model and running one torch thread. On a CPU this beats threads
  inside one process for small images, where the per-operation overhead of forward AD,
  not the arithmetic, dominates.
* :class:`DaskLineEvaluator`: tasks on a Dask distributed cluster (an address, or
  ``"local"`` for a :class:`~distributed.LocalCluster` of processes), for a p-value too big
  for one machine. The model is sent to every worker once.

The executors are written here rather than taken from torch (``torch.multiprocessing``
shares tensors, not whole evaluators) because each worker must keep its own checked,
BatchNorm-folded float64 model between batches.
"""

from __future__ import annotations

import abc
import concurrent.futures
import multiprocessing
import uuid

import numpy as np
import torch
from torch import nn

from medsi.errors import ConfigError
from medsi.si.line import LineEvaluator, LinePieces

__all__ = ["ProcessLineEvaluator", "DaskLineEvaluator", "open_line_evaluator", "split_points"]

# One evaluator per model in each worker process, built on first use and kept.
_WORKER_EVALUATORS: dict[str, LineEvaluator] = {}


class _ModelSpec:
    """What a worker needs to rebuild the evaluator: the model, threshold, device, threads."""

    def __init__(self, score: nn.Module, threshold: float, device: str, threads: int):
        self.key = uuid.uuid4().hex
        self.score = score
        self.threshold = float(threshold)
        self.device = device
        self.threads = int(threads)

    def evaluator(self) -> LineEvaluator:
        found = _WORKER_EVALUATORS.get(self.key)
        if found is None:
            torch.set_num_threads(self.threads)
            found = LineEvaluator(self.score, self.threshold, device=self.device)
            _WORKER_EVALUATORS[self.key] = found
        return found


def _install(spec: _ModelSpec) -> None:
    """Process-pool initializer: build the worker's evaluator once."""
    spec.evaluator()


def _evaluate_installed(key: str, a, b, z, mask) -> LinePieces:
    return _WORKER_EVALUATORS[key].evaluate(a, b, z, mask=mask)


def _evaluate_with_spec(spec: _ModelSpec, a, b, z, mask) -> LinePieces:
    return spec.evaluator().evaluate(a, b, z, mask=mask)


def split_points(k: int, parts: int, min_points: int = 1) -> list[slice]:
    """Cut K points into at most ``parts`` contiguous chunks of near-equal size.

    Chunks hold at least ``min_points`` points (except when K itself is smaller), so a
    small batch is not scattered thinner than a worker's fixed cost is worth.
    """
    parts = max(1, min(int(parts), k // max(1, int(min_points)) or 1))
    edges = np.linspace(0, k, parts + 1).round().astype(int)
    pairs = zip(edges[:-1], edges[1:], strict=True)
    return [slice(int(lo), int(hi)) for lo, hi in pairs if hi > lo]


def _chunk(array, k: int, part: slice):
    """The rows of a per-point array (K, H, W) in ``part``; shared arrays (H, W) as they are."""
    if array is None:
        return None
    array = np.asarray(array)
    return array[part] if array.ndim == 3 and len(array) == k and k > 1 else array


def _join(z: np.ndarray, chunks: list[LinePieces]) -> LinePieces:
    return LinePieces(
        z=z,
        lower=np.concatenate([c.lower for c in chunks]),
        upper=np.concatenate([c.upper for c in chunks]),
        selected=np.concatenate([c.selected for c in chunks]),
        degenerate=np.concatenate([c.degenerate for c in chunks]),
    )


class _DistributedLineEvaluator(LineEvaluator, abc.ABC):
    """A LineEvaluator whose ``evaluate`` cuts each batch into chunks run elsewhere."""

    def __init__(self, score, threshold, mask, device, workers: int, min_points: int):
        super().__init__(score, threshold, mask=mask, device=device)
        if int(workers) < 1:
            raise ConfigError(f'"workers" must be a positive integer, got {workers}.')
        self.workers = int(workers)
        self.min_points = max(1, int(min_points))
        # the workers get the caller's module (not the folded copy): they check and fold it
        # themselves, exactly as this process did
        self._spec = _ModelSpec(score, threshold, str(self.device), threads=1)

    @abc.abstractmethod
    def _submit(self, a, b, z, mask):
        """Start evaluating one chunk; return a future."""

    @abc.abstractmethod
    def _gather(self, futures: list) -> list[LinePieces]:
        """Wait for the chunks, in order."""

    def evaluate(self, a, b, z, mask=None) -> LinePieces:
        """As :meth:`LineEvaluator.evaluate`, with the points split over the workers."""
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        k = len(z)
        if mask is None:
            mask = self.mask
        parts = split_points(k, self.workers, self.min_points)
        futures = [
            self._submit(_chunk(a, k, p), _chunk(b, k, p), z[p], _chunk(mask, k, p)) for p in parts
        ]
        return _join(z, self._gather(futures))


class ProcessLineEvaluator(_DistributedLineEvaluator):
    """Evaluate line points in local worker processes, one torch thread each.

    Parameters
    ----------
    score, threshold, mask, device
        As :class:`~medsi.si.LineEvaluator`.
    workers
        Number of worker processes (e.g. the number of cores).
    min_points
        Fewest points per worker chunk: batches smaller than ``workers * min_points``
        use fewer workers.

    Examples
    --------
    >>> from medsi.si import ProcessLineEvaluator, SelectiveTest   # doctest: +SKIP
    >>> with ProcessLineEvaluator(score, 0.8, workers=2) as evaluator:   # doctest: +SKIP
    ...     result = SelectiveTest(evaluator, 0.8).run(x, r, batch_size=64)
    """

    def __init__(
        self,
        score: nn.Module,
        threshold: float,
        mask: np.ndarray | None = None,
        device=None,
        workers: int = 2,
        min_points: int = 1,
    ):
        super().__init__(score, threshold, mask, device, workers, min_points)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_install,
            initargs=(self._spec,),
        )

    def _submit(self, a, b, z, mask):
        return self._pool.submit(_evaluate_installed, self._spec.key, a, b, z, mask)

    def _gather(self, futures):
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskLineEvaluator(_DistributedLineEvaluator):
    """Evaluate line points as tasks on a Dask distributed cluster.

    Parameters
    ----------
    score, threshold, mask, device
        As :class:`~medsi.si.LineEvaluator`; ``device`` applies on the workers too.
    scheduler
        Address of a running scheduler (``"tcp://host:8786"``), ``"local"`` to start a
        :class:`~distributed.LocalCluster` of ``workers`` processes with one thread each, or
        a :class:`~distributed.Client` already connected. Start the workers of your own
        cluster with one thread each and Dask's profiler off
        (``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``): the profiler slows the
        model's forward pass 3-4x.
    workers
        Chunks per batch (the cluster's worker count is used when larger is pointless);
        and the size of the local cluster with ``scheduler="local"``.
    min_points
        Fewest points per task.
    """

    def __init__(
        self,
        score: nn.Module,
        threshold: float,
        mask: np.ndarray | None = None,
        device=None,
        scheduler="local",
        workers: int | None = None,
        min_points: int = 1,
    ):
        import dask
        from distributed import Client, LocalCluster

        self._own_cluster = None
        self._own_client = False
        if isinstance(scheduler, Client):
            client = scheduler
        elif scheduler == "local":
            # Dask's sampling profiler walks the worker's Python stack every few ms; on the
            # forward-AD pass, which runs many small Python-level ops, it cost 3-4x (measured).
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self._own_cluster = LocalCluster(
                    n_workers=int(workers or 2),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                )
            client = Client(self._own_cluster)
            self._own_client = True
        elif isinstance(scheduler, str) and scheduler:
            client = Client(scheduler)
            self._own_client = True
        else:
            raise ConfigError(
                f'"scheduler" must be a Dask scheduler address, "local" or a Client, got '
                f"{scheduler!r}."
            )
        if workers is None:
            workers = max(1, len(client.scheduler_info().get("workers", {})))
        super().__init__(score, threshold, mask, device, workers, min_points)
        self.client = client
        # one copy of the model per worker, referenced by every task
        self._spec_future = client.scatter(self._spec, broadcast=True, hash=False)

    def _submit(self, a, b, z, mask):
        return self.client.submit(_evaluate_with_spec, self._spec_future, a, b, z, mask, pure=False)

    def _gather(self, futures):
        return self.client.gather(futures)

    def close(self) -> None:
        """Disconnect, and stop the local cluster if this evaluator started it."""
        if self._own_client:
            self.client.close()
        if self._own_cluster is not None:
            self._own_cluster.close()


def open_line_evaluator(
    score: nn.Module,
    threshold: float,
    device=None,
    workers: int = 1,
    scheduler: str | None = None,
) -> LineEvaluator:
    """The evaluator for the executor asked for; close it (or use ``with``) when done.

    Parameters
    ----------
    score, threshold, device
        As :class:`~medsi.si.LineEvaluator`.
    workers
        1: in this process; more: that many local worker processes (or, with
        ``scheduler``, chunks per batch on the cluster).
    scheduler
        A Dask scheduler address or ``"local"``; None for no cluster.
    """
    if scheduler:
        return DaskLineEvaluator(
            score,
            threshold,
            device=device,
            scheduler=scheduler,
            workers=workers if workers > 1 else None,
        )
    if int(workers) > 1:
        return ProcessLineEvaluator(score, threshold, device=device, workers=workers)
    return LineEvaluator(score, threshold, device=device)
