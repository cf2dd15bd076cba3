"""Module paths of actadd 0.1, kept working for one release: `import actadd.evaluate` (and the
others below) gives a module that forwards each name to where it lives now, with a
DeprecationWarning naming the new path. The old paths go away in 0.3.

This is the one module of the method's layer that names the experiments, and only by string,
on first use of an old path: `import actadd` imports no experiment.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> the modules its names moved to, searched in order
MOVED = {
    "actadd.evaluate": ("actadd.experiments.generation", "actadd.experiments.data"),
    "actadd.likelihood": ("actadd.experiments.likelihood", "actadd.experiments.data"),
    "actadd.overhead": ("actadd.experiments.overhead",),
    "actadd.paper": ("actadd.experiments.paper",),
    "actadd.scorers": ("actadd.experiments.scorers",),
    "actadd.stats": ("actadd.experiments.stats",),
    "actadd.results": ("actadd.experiments.results", "actadd.output"),
    "actadd.distributed": ("actadd.experiments.dask", "actadd.provenance"),
}


class _OldPath(types.ModuleType):
    """A module of 0.1 whose names live elsewhere now."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        homes = MOVED[self.__name__]
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, name):
                warnings.warn(f"{self.__name__}.{name} is now {home}.{name}; the old path goes away in actadd 0.3",
                              DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has moved to {' and '.join(homes)}, which have no {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return _OldPath(spec.name, f"Moved to {' and '.join(MOVED[spec.name])} (an alias until actadd 0.3).")

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Let the old paths import (after every real module: a module that exists wins)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
