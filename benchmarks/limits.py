"""The machine's limits, for benchmarks that state them: a bound is the least time the machine was
seen to take for the least work an engine must do, so that no engine can honestly beat it.

    fastest(methods)                    the highest rate of several ways of doing work, each repeated
    read_methods(matrices)              ways of reading every byte of some matrices once
    gemm_methods(shapes)                float32 matrix products of the shapes a pass multiplies
    check_bounds(measured, bounds)      engine speeds above 100% of a bound: the bound is wrong
    enforce(violations)                 fail loudly (SystemExit) if there are any

A bound measured one way, once, in the middle of other work (as bench_model.py did before) can be
slower than the engine it bounds: decode once read gpt2's weights at 21 GB/s against a "bound"
of 13.5 GB/s from one matrix-vector sweep, and the report said 158%. Taking the fastest of
several methods and repeats makes the bound a bound; `check_bounds` makes a wrong one fail.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def fastest(methods: dict[str, tuple[Callable[[], object], float]], repeats: int = 5,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """methods: {name: (run, work)}, work the bytes or FLOPs one run does. Every method runs
    `repeats` times (round robin, after one warm-up each); the result is the highest rate
    (work / its fastest run) of any method, and which method gave it."""
    if not methods or repeats < 1:
        raise ValueError("need at least one method and one repeat")
    for fn, _ in methods.values():
        fn()
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, (fn, _) in methods.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    rates = {name: methods[name][1] / seconds for name, seconds in best.items()}
    name = max(rates, key=rates.get)
    return {"rate": rates[name], "method": name, "seconds": best[name], "per_method_rate": rates, "repeats": repeats}


def read_methods(matrices: list[np.ndarray]) -> dict[str, tuple[Callable[[], object], float]]:
    """Ways of reading every byte of `matrices` once: matrix-vector products both ways round
    (BLAS, all its threads) and single-pass reductions (NumPy's own loops)."""
    nbytes = float(sum(w.nbytes for w in matrices))
    rows = {n: np.ones((1, n), matrices[0].dtype) for n in {w.shape[0] for w in matrices}}
    cols = {n: np.ones((n, 1), matrices[0].dtype) for n in {w.shape[1] for w in matrices}}
    return {
        "x @ W (gemv)": (lambda: [rows[w.shape[0]] @ w for w in matrices], nbytes),
        "W @ x (gemv)": (lambda: [w @ cols[w.shape[1]] for w in matrices], nbytes),
        "max (one pass)": (lambda: [np.maximum.reduce(w, axis=None) for w in matrices], nbytes),
        "add.reduce over rows": (lambda: [np.add.reduce(w, axis=0) for w in matrices], nbytes),
    }


def gemm_methods(shapes: list[tuple[int, int, int]], seed: int = 0) -> dict[str, tuple[Callable[[], object], float]]:
    """Float32 products [m, k] @ [k, n] of the given shapes, each with its FLOPs."""
    rng = np.random.default_rng(seed)
    methods = {}
    for m, k, n in shapes:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        methods[f"{m}x{k} @ {k}x{n}"] = ((lambda a=a, b=b: a @ b), 2.0 * m * k * n)
    return methods


def check_bounds(measured: dict[str, float], bounds: dict[str, float]) -> list[str]:
    """Each `measured[name]` (an engine's speed, e.g. "decode b1 minigpt": tok/s) against
    `bounds[case]` for the case its name starts with; returns a line for each above 100%."""
    out = []
    for name, speed in measured.items():
        case = next((c for c in bounds if name.startswith(c)), None)
        if case is not None and speed > bounds[case]:
            out.append(f"{name}: {speed:.4g}/s is {speed / bounds[case]:.0%} of the bound {bounds[case]:.4g}/s for "
                       f"{case}; a bound an engine beats is not a bound (measure it with a faster method)")
    return out


def enforce(violations: list[str]) -> None:
    if violations:
        raise SystemExit("benchmark bound exceeded:\n  " + "\n  ".join(violations))
