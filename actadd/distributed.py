"""The eval tasks on a Dask cluster (the `dask` extra: `pip install 'minigpt-actadd[dask]'`).

    actadd eval topic ... --workers 4                  a LocalCluster of 4 processes here
    actadd eval sentiment ... --scheduler tcp://h:8786 an existing cluster (several machines;
                                                       dask-cuda: one worker per GPU)

A run is cut into units of work exactly as a single process cuts it (actadd.evaluate.units:
(condition, prompt, samples) shards, or grid cells sharing a batch; the likelihood tasks' batches
of chunks or facts, fixed by the settings), so each unit's records do not depend on where it
runs: seeds belong to (prompt, sample), never to a worker. Each worker
loads the model once, from the name, revision and options it was loaded with here, checks its
weights' SHA-256 against the client's, and keeps it for every later unit. Units are submitted
together; records come back as JSON text as each unit finishes, and the client appends them to
the same resumable results file as a single process does (scoring stays on the client). At the
end the file is rewritten in unit order, so every output file equals a single process's.

Faults: Dask re-runs the units of a worker that dies on another worker; the client writes each
unit once (by its index), whichever copy finishes; a client stopped mid-run resumes from the
results file like any run. Dask's own messages between client and workers are pickles: run only
on a cluster you trust, as Dask's documentation says.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import minigpt

EXTRA_HINT = "pip install 'minigpt-actadd[dask]' (dask[distributed]; for GPUs also dask-cuda)"


class DistributedError(ValueError):
    """Dask missing, a scheduler that does not answer, or a worker whose model is not the client's."""


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise DistributedError(f"--workers / --scheduler run on Dask, which is not installed: {EXTRA_HINT}") from None
    return distributed


# ---------------------------------------------------------------------------------------------
# What a worker needs to rebuild the run's context


@dataclass(frozen=True)
class ModelSource:
    """How to load a model again elsewhere: what minigpt.load was given, and the SHA-256 of the
    weights it gave, which the copy must match."""

    name_or_path: str
    revision: str | None
    options: tuple
    backend: str
    weights_sha256: str

    @classmethod
    def of(cls, model, backend: str | None = None) -> ModelSource:
        """`backend`: the workers' ("numpy", "cupy"; default the model's own here)."""
        from .vector_io import weights_hash

        source = getattr(model, "loaded_from", None)
        if source is None:
            raise DistributedError("a distributed run loads the model again on each worker, so it must come from "
                             "minigpt.load(name or folder) (this one was built from arrays in memory)")
        return cls(source["name_or_path"], source["revision"], tuple(sorted(source["options"].items())),
                   backend or model.backend.name, weights_hash(model))

    def load(self):
        from .vector_io import weights_hash

        model, tokenizer = minigpt.load(self.name_or_path, revision=self.revision, backend=self.backend,
                                        **dict(self.options))
        if weights_hash(model) != self.weights_sha256:
            raise DistributedError(f"worker {os.uname().nodename}: {self.name_or_path} (revision {self.revision}) has weights "
                             f"with SHA-256 {weights_hash(model)}, not the client's {self.weights_sha256}: the same name "
                             "is another checkpoint on this machine")
        return model, tokenizer


@dataclass(frozen=True)
class WorkerSpec:
    model: ModelSource
    fluency: ModelSource | None
    relevance_model: str | None
    max_new_tokens: int
    sampling: tuple
    seed: int
    topic: object                                   # a compiled pattern, or None

    @classmethod
    def of(cls, ctx, backend: str | None = None) -> WorkerSpec:
        return cls(ModelSource.of(ctx.model, backend), ModelSource.of(ctx.fluency[0], backend) if ctx.fluency else None,
                   ctx.relevance_model, ctx.max_new_tokens, tuple(sorted(ctx.sampling.items())), ctx.seed, ctx.topic)


# On a worker: models by source and contexts by spec, each built once and kept for the worker's life.
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


def _context(spec: WorkerSpec):
    from .evaluate import Context, _relevance

    with _LOCK:
        if spec not in _CONTEXTS:
            model, tokenizer = _model(spec.model)
            fluency = _model(spec.fluency) if spec.fluency else None
            relevance = _relevance(spec.relevance_model) if spec.relevance_model else None
            _CONTEXTS[spec] = Context(model, tokenizer, spec.max_new_tokens, dict(spec.sampling), spec.seed, fluency,
                                      relevance, spec.topic, spec.relevance_model)
        return _CONTEXTS[spec]


def run_unit(spec: WorkerSpec, unit) -> str:
    """On a worker: one unit's records (evaluate.sample_unit), as the JSON text they are stored as."""
    from .evaluate import sample_unit
    from .results import json_safe

    return json.dumps([json_safe(r) for r in sample_unit(_context(spec), unit)])


def run_on_model(source: ModelSource, work, item) -> str:
    """On a worker: work(model, tokenizer, item) -> records (a module-level function, such as
    likelihood.relevance_batch), as JSON text."""
    from .results import json_safe

    model, tokenizer = _model(source)
    return json.dumps([json_safe(r) for r in work(model, tokenizer, item)])


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

    def run(self, ctx, units: Sequence) -> Iterator[tuple[int, list[dict]]]:
        """(index into units, its records) as each sampling unit (evaluate.Unit) finishes, each once."""
        spec = WorkerSpec.of(ctx, self.backend)
        return self._gather({self.client.submit(run_unit, spec, unit, pure=False): i for i, unit in enumerate(units)})

    def map(self, model, work, items: Sequence) -> Iterator[tuple[int, list[dict]]]:
        """(index into items, records) as work(model, tokenizer, item) finishes on a worker, for
        each item, each once: the likelihood tasks' batches."""
        source = ModelSource.of(model, self.backend)
        return self._gather({self.client.submit(run_on_model, source, work, item, pure=False): i
                             for i, item in enumerate(items)})

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
        """Per worker: the models it loaded (once per run's spec) and the seconds each took."""
        return self.client.run(loads_on_worker)
