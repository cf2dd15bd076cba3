"""A strict array backend for the CPU tests: NumPy underneath, with the manners of a GPU array
library at its strictest, so that a NumPy-only assumption in code meant for every backend fails
here, in CI, rather than on someone's GPU.

A StrictArray refuses:
  - implicit conversion to NumPy (np.asarray(x), np.array(x)), as CuPy does;
  - every NumPy function and ufunc applied to it (np.exp(x), np.zeros_like(x)): code must use
    the array's namespace (CuPy dispatches some of these silently and refuses others);
  - a host NumPy array beside it, in an operator, a namespace function or an index: CuPy
    refuses the first two (and copies the third silently);
  - reading values on the host implicitly (bool(x), int(x), float(x), x.item(), x.tolist(),
    iterating): on a GPU each is a hidden synchronisation;
  - boolean-mask indexing, whose result's size needs a synchronisation too;
  - creating a float array without a dtype (NumPy and CuPy would make it float64).
Crossing the boundary is explicit and logged: `xp.asarray(host array)` copies to the device,
`backend.to_host(x)` copies back. Tests count those crossings.
"""

from __future__ import annotations

import numpy as np

from minigpt.backend import Backend


class StrictError(TypeError):
    """What a real device library would refuse, or do behind the caller's back."""


def _host_array_error(x: np.ndarray, where: str) -> StrictError:
    return StrictError(f"{where}: a host NumPy array {x.dtype}{list(x.shape)} beside a device array; "
                       "move it with xp.asarray first")


def _operand(x, where: str):
    """x unwrapped for NumPy: device arrays to their buffer; scalars and dtypes as they are."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise _host_array_error(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(_operand(i, where) for i in x)
    return x


def _wrap(r):
    if isinstance(r, np.ndarray):
        return StrictArray(r)
    if isinstance(r, np.generic):  # a reduction to one value stays on the device, 0-d
        return StrictArray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(i) for i in r)
    return r


def _index(key):
    items = key if isinstance(key, tuple) else (key,)
    out = []
    for k in items:
        if isinstance(k, StrictArray):
            if k._a.dtype == bool:
                raise StrictError("boolean-mask indexing: its size depends on the data, so the device must "
                                  "synchronise; index with integer arrays")
            out.append(k._a)
        elif isinstance(k, (np.ndarray, list)):
            raise StrictError(f"index is a host {type(k).__name__}; move it with xp.asarray first")
        elif isinstance(k, (np.integer, int, slice, type(None), type(Ellipsis))):
            out.append(k)
        else:
            raise StrictError(f"unsupported index {type(k).__name__}")
    return tuple(out) if isinstance(key, tuple) else out[0]


class StrictArray:
    __slots__ = ("_a",)
    __array_ufunc__ = None       # numpy's operators give way to ours; np.exp(x) is refused
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array_namespace__(self, api_version=None):
        return xp

    # --- refused ----------------------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise StrictError("implicit conversion of a device array to NumPy; use backend.to_host(x)")

    def __array_function__(self, func, types, args, kwargs):
        raise StrictError(f"numpy.{func.__name__} called on a device array; use the array's namespace")

    def _sync(self, *args, **kwargs):
        raise StrictError("reads a device value on the host implicitly (a hidden synchronisation); "
                          "use backend.to_host(x)")

    __bool__ = __int__ = __float__ = __index__ = __complex__ = __iter__ = item = tolist = _sync

    # --- metadata -----------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: StrictArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    # --- indexing -----------------------------------------------------------------------------
    def __getitem__(self, key):
        return StrictArray(np.asarray(self._a[_index(key)]))

    def __setitem__(self, key, value):
        self._a[_index(key)] = _operand(value, "setitem")

    # --- methods ------------------------------------------------------------------------------
    _METHODS = frozenset({"reshape", "transpose", "sum", "max", "argmax", "astype", "copy"})

    def __getattr__(self, name):
        if name not in StrictArray._METHODS:
            raise AttributeError(f"StrictArray has no attribute {name!r} (a device array need not either)")
        method = getattr(self._a, name)

        def call(*args, **kwargs):
            return _wrap(method(*_operand(args, name), **{k: _operand(v, name) for k, v in kwargs.items()}))
        return call


def _binary(name):
    op = getattr(np.ndarray, name)

    def method(self, other):
        return _wrap(op(self._a, _operand(other, f"operator {name}")))
    return method


def _inplace(name):
    op = getattr(np.ndarray, name)

    def method(self, other):
        op(self._a, _operand(other, f"operator {name}"))
        return self
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(StrictArray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(StrictArray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(StrictArray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(StrictArray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "invert", "abs"):
    setattr(StrictArray, f"__{_name}__", (lambda op: lambda self: StrictArray(op(self._a)))(getattr(np.ndarray, f"__{_name}__")))


class StrictNamespace:
    """The functions minigpt and actadd may call on a backend's namespace, and no more."""

    FUNCTIONS = frozenset({"zeros", "empty", "arange", "where", "cumsum", "tanh", "exp", "log", "subtract",
                           "divide", "negative", "concatenate", "take_along_axis", "argsort", "partition", "maximum"})
    NEEDS_DTYPE = frozenset({"zeros", "empty"})
    float16, float32, float64 = np.float16, np.float32, np.float64
    int32, int64, intp, bool = np.int32, np.int64, np.intp, np.bool_
    inf, nan, pi = np.inf, np.nan, np.pi

    def __init__(self):
        self.to_device_log: list[tuple] = []   # the shape of each copy host -> device
        self.to_host_log: list[tuple] = []     # and device -> host

    def asarray(self, x, dtype=None):
        """A device array: x itself if it is one, else a copy of the host data (logged)."""
        if isinstance(x, StrictArray):
            return x if dtype is None or x.dtype == dtype else StrictArray(x._a.astype(dtype))
        host = np.array(x, dtype=dtype, copy=True)
        self.to_device_log.append(host.shape)
        return StrictArray(host)

    def to_host(self, x) -> np.ndarray:
        if not isinstance(x, StrictArray):
            raise StrictError(f"to_host expects a device array, got {type(x).__name__}")
        self.to_host_log.append(x.shape)
        return x._a.copy()

    def __getattr__(self, name):
        if name not in StrictNamespace.FUNCTIONS:
            raise AttributeError(f"the strict namespace has no {name!r}")
        fn = getattr(np, name)

        def call(*args, **kwargs):
            if name in StrictNamespace.NEEDS_DTYPE and kwargs.get("dtype") is None:
                raise StrictError(f"xp.{name} without dtype makes float64; give the dtype")
            out = kwargs.get("out")
            result = fn(*_operand(args, f"xp.{name}"), **{k: _operand(v, f"xp.{name}") for k, v in kwargs.items()})
            return out if isinstance(out, StrictArray) else _wrap(result)
        return call


xp = StrictNamespace()  # the namespace every StrictArray reports; tests read its logs


def strict_backend() -> Backend:
    """A Backend on the strict namespace, its transfer logs emptied."""
    xp.to_device_log.clear()
    xp.to_host_log.clear()
    return Backend("strict", xp, xp.asarray, xp.to_host)
