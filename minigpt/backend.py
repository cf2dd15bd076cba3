"""Where a model's arrays live: NumPy on the host (the default), or CuPy on an NVIDIA GPU.

The model, generation and ActAdd are one code path for both. Array code takes its functions
from the namespace of the arrays it is given (`array_namespace(x)`) or from the model's
backend (`model.xp`), never from a bare `np.` call on an activation, and it moves data across
the host/device boundary only through `Backend.to_device` and `Backend.to_host`, so that
every crossing is written where it happens. What crosses, and when:

    loading                  every parameter, once, host -> device
    a forward pass           token ids, position ids and the padding mask, host -> device
                             ([batch, pos] integers; checked on the host first)
    a generation step        the sampled ids, device -> host ([batch] integers), and back
    what the API returns     logits and run_with_cache's activations stay on the device
                             (arrays of `model.xp`); `model.backend.to_host(x)` copies one
    HookPoint.positions      host NumPy: it is bookkeeping, made on the host

CuPy is optional: it is imported only when asked for (`backend="cupy"`), and installed with
the extra that names your CUDA major (`pip install 'minigpt-actadd[cuda12]'` or `[cuda13]`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

BACKENDS = ("numpy", "cupy")


class BackendError(RuntimeError):
    """The backend asked for cannot run here (CuPy missing, no CUDA device)."""


@dataclass(frozen=True)
class Backend:
    name: str
    xp: object                          # the array namespace: numpy, cupy
    to_device: Callable                 # host NumPy array -> array of xp (numpy: no copy)
    to_host: Callable                   # array of xp -> host NumPy array (numpy: no copy)

    def __repr__(self):
        return f"Backend({self.name!r})"


NUMPY = Backend("numpy", np, np.asarray, np.asarray)


def cupy_backend() -> Backend:
    """CuPy on the current CUDA device, or a BackendError saying what is missing."""
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            f"backend='cupy' needs CuPy, which cannot be imported here ({e}). Install it with the "
            "extra for your CUDA major version: pip install 'minigpt-actadd[cuda12]' (CUDA 12.x) "
            "or 'minigpt-actadd[cuda13]' (CUDA 13.x); `nvidia-smi` shows the driver's CUDA version"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver; its type lives in cupy
        raise BackendError(f"backend='cupy': CuPy {cupy.__version__} is installed but finds no usable "
                           f"CUDA device ({type(e).__name__}: {e})") from None
    if count == 0:
        raise BackendError(f"backend='cupy': CuPy {cupy.__version__} is installed but sees no CUDA device")
    return Backend("cupy", cupy, cupy.asarray, cupy.asnumpy)


def get_backend(backend: str | Backend = "numpy") -> Backend:
    """A Backend from its name ("numpy", "cupy"), or the Backend given."""
    if isinstance(backend, Backend):
        return backend
    if backend == "numpy":
        return NUMPY
    if backend == "cupy":
        return cupy_backend()
    raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")


def array_namespace(x):
    """The namespace of array x: `x.__array_namespace__()` (NumPy 2, the array API), or cupy
    for a cupy.ndarray (CuPy 14 does not define that method yet)."""
    get = getattr(x, "__array_namespace__", None)
    if get is not None:
        return get()
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy
    raise TypeError(f"expected an array (NumPy or CuPy), got {type(x).__name__}")
