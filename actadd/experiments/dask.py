"""The experiments' units on a Dask cluster (the `dask` extra: `pip install 'minigpt-actadd[dask]'`).

    actadd eval topic ... --workers 4                  a LocalCluster of 4 processes here
    actadd eval sentiment ... --scheduler tcp://h:8786 an existing cluster (several machines;
                                                       dask-cuda: one worker per GPU)

A task cuts its work into units exactly as a single process does (actadd.experiments.runner),
so each unit's records do not depend on where it runs: seeds belong to (prompt, sample), never
to a worker. Each worker builds the task's context from its recipe once (loading each model
from the name, revision and options it was loaded with here, and checking its weights' SHA-256
against the client's) and keeps it for every later unit. Units are submitted together; records
come back as JSON text as each unit finishes, and the task appends them to its resumable
results file as a single process does (scoring stays on the client); the task then puts the
file in unit order, so every output file equals a single process's.

Faults: Dask re-runs the units of a worker that dies on another worker; each unit is yielded
once (by its index), whichever copy finishes; a client stopped mid-run resumes from the results
file like any run. Dask's own messages between client and workers are pickles: run only on a
cluster you trust, as Dask's documentation says.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Callable, Iterator, Sequence

from ..output import json_safe
from ..provenance import ModelSource

EXTRA_HINT = "pip install 'minigpt-actadd[dask]' (dask[distributed]; for GPUs also dask-cuda)"


class DistributedError(ValueError):
    """Dask missing, a scheduler that does not answer, or a unit that kills its workers."""


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise DistributedError(f"--workers / --scheduler run on Dask, which is not installed: {EXTRA_HINT}") from None
    return distributed


# ---------------------------------------------------------------------------------------------
# On a worker: models by source and contexts by recipe, each built once and kept for its life


_MODELS: dict = {}
_CONTEXTS: dict = {}
_LOADS: list[dict] = []
_LOCK = threading.RLock()


def _model(source: ModelSource):
    with _LOCK:
        if source not in _MODELS:
            start = time.perf_counter()
            _MODELS[source] = source.load()
            _LOADS.append({"pid": os.getpid(), "model": source.name_or_path, "seconds": time.perf_counter() - start})
        return _MODELS[source]


def _context(recipe):
    with _LOCK:
        if recipe not in _CONTEXTS:
            _CONTEXTS[recipe] = recipe.build(_model)
        return _CONTEXTS[recipe]


def run_unit(work: Callable, recipe, unit) -> str:
    """On a worker: work(context, unit), its records as the JSON text they are stored as."""
    return json.dumps([json_safe(r) for r in work(_context(recipe), unit)])


def loads_on_worker() -> list[dict]:
    return list(_LOADS)


# ---------------------------------------------------------------------------------------------
# The client side


class DaskRunner:
    """Runs units on a Dask cluster: a LocalCluster of `workers` processes (one thread each:
    the work is BLAS-bound and a process holds one copy of the model), or the cluster whose
    scheduler is at `scheduler`. `backend`: the workers' array backend when it is not the
    client's (a client on a CPU driving GPU workers). Use as a context manager, or call close()."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, timeout: float = 60,
                 backend: str | None = None):
        if (workers is None) == (scheduler is None):
            raise ValueError("give either workers (a local cluster) or scheduler (an address), not both or neither")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers={workers!r}: expected a number of processes >= 1")
        distributed = _import_distributed()
        self.cluster = None
        if workers is not None:
            self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                    host="127.0.0.1", dashboard_address=":0")
            self.client = distributed.Client(self.cluster, timeout=timeout)
        else:
            try:
                self.client = distributed.Client(scheduler, timeout=timeout)
            except OSError as e:
                raise DistributedError(f"--scheduler {scheduler}: no Dask scheduler answered within {timeout:g} s ({e})") from None
        self.backend = backend

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def describe(self) -> str:
        n = len(self.client.scheduler_info()["workers"])
        return f"Dask, {n} workers at {self.client.scheduler.address}"

    def run(self, work: Callable, context, units: Sequence) -> Iterator[tuple[int, list[dict]]]:
        """(index into units, its records) as each unit finishes on a worker, each once."""
        recipe = context.recipe(lambda model: ModelSource.of(model, self.backend))
        return self._gather({self.client.submit(run_unit, work, recipe, unit, pure=False): i
                             for i, unit in enumerate(units)})

    def _gather(self, futures: dict) -> Iterator[tuple[int, list[dict]]]:
        distributed = _import_distributed()
        seen = set()
        try:
            for future in distributed.as_completed(futures):
                i = futures[future]
                if i in seen:                           # a unit re-run after a fault finishes once only
                    continue
                seen.add(i)
                try:
                    records = future.result()
                except distributed.KilledWorker as e:      # Dask gave up: it took down worker after worker
                    raise DistributedError(f"batch {i} of this run was on {getattr(e, 'allowed_failures', 'several')}+ "
                                           "workers that died (out of memory?), and Dask gave up on it; the finished "
                                           "batches are in the results file, and rerunning resumes") from None
                yield i, json.loads(records)
        finally:
            for future in futures:
                future.cancel()

    def loads(self) -> dict:
        """Per worker: the models it loaded (once per run's recipe) and the seconds each took."""
        return self.client.run(loads_on_worker)
