"""One way to run an experiment's work, here or on a Dask cluster.

A task cuts its work into units fixed by its settings (so that a resumed run cuts it the same
way, and a unit's records do not depend on where it runs) and hands them to a runner:

    with open_runner(workers, scheduler, backend) as runner:
        for index, records in runner.run(work, context, units):
            ...                                # append the unit's records to the results file

`work(context, unit) -> records` is a function at module level (a worker imports it by name);
`context` is what every unit needs (the models, the sampling settings). The runner is `Here`
(this process, units in order) or actadd.experiments.dask.DaskRunner (a cluster, units in the
order they finish). To send a context to other processes a runner asks it for a recipe,
`context.recipe(source)`, in which `source(model)` stands for each model (how to load it again,
with its weights' hash); a worker builds the context back with `recipe.build(load)`, once, and
keeps it for every unit. A task never imports the Dask module, and the Dask module no task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from minigpt import Tokenizer, Transformer

from ..provenance import ModelSource


class Here:
    """Runs every unit in this process, in order."""

    def describe(self) -> str | None:
        return None

    def run(self, work: Callable, context, units: Sequence) -> Iterator[tuple[int, list[dict]]]:
        for i, unit in enumerate(units):
            yield i, work(context, unit)

    def __enter__(self) -> Here:
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_runner(workers: int | None = None, scheduler: str | None = None, backend: str | None = None):
    """`Here`, or a DaskRunner for `workers` (a LocalCluster of that many processes) or
    `scheduler` (an existing cluster's address); `backend`: the workers' array backend, when it
    is not the client's. Use it as a context manager (a local cluster is stopped at the end)."""
    if workers is None and scheduler is None:
        if backend is not None:
            raise ValueError("worker_backend is for runs on Dask (workers or scheduler)")
        return Here()
    from .dask import DaskRunner

    return DaskRunner(workers=workers, scheduler=scheduler, backend=backend)


@dataclass
class ModelContext:
    """The context of work that needs one model and its tokenizer (the likelihood tasks)."""

    model: Transformer
    tokenizer: Tokenizer

    def recipe(self, source: Callable[[Transformer], ModelSource]) -> ModelRecipe:
        return ModelRecipe(source(self.model))


@dataclass(frozen=True)
class ModelRecipe:
    model: ModelSource

    def build(self, load: Callable[[ModelSource], tuple]) -> ModelContext:
        return ModelContext(*load(self.model))
