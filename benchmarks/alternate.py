"""Timing two engines in one process on a noisy machine: every case on every engine in each
repeat, the engines' order reversed on odd repeats, medians compared. Shared by bench_model.py
and bench_cuda.py.

cases: {case name: (units of work, {engine: run})}, each run a function that finishes its work
(a GPU run synchronises before it returns).
"""

from __future__ import annotations

import statistics
import time


def warm_up(cases: dict) -> None:
    """Every run once, untimed: pages the weights in, compiles or picks kernels."""
    for _, runs in cases.values():
        for run in runs.values():
            run()


def time_alternating(cases: dict, repeats: int, after_each_repeat=None) -> dict:
    """{(case, engine): [seconds, one per repeat]}. `after_each_repeat(r)` runs other
    measurements inside the same repeat (so they share its moment of the machine)."""
    times = {(case, engine): [] for case, (_, runs) in cases.items() for engine in runs}
    for r in range(repeats):
        for case, (_, runs) in cases.items():
            for engine, run in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
                start = time.perf_counter()
                run()
                times[case, engine].append(time.perf_counter() - start)
        if after_each_repeat is not None:
            after_each_repeat(r)
    return times


def rows(cases: dict, times: dict, baseline: str) -> list[dict]:
    """One row per (case, engine): median, min and max seconds, units per second, and the
    engine's speed relative to `baseline`'s (its median time over this engine's)."""
    out = []
    for case, (units, runs) in cases.items():
        med = {e: statistics.median(times[case, e]) for e in runs}
        for engine in runs:
            ts = times[case, engine]
            out.append({"case": case, "engine": engine, "median_s": med[engine], "min_s": min(ts), "max_s": max(ts),
                        "tokens_per_s": units / med[engine], f"speedup_vs_{baseline}": med[baseline] / med[engine]})
    return out
