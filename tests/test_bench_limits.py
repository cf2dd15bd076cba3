"""The benchmarks' machine limits (benchmarks/limits.py): a bound is the fastest of its methods,
and an engine measured above a bound fails the benchmark instead of being reported as 158%."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import limits  # noqa: E402


def test_an_engine_above_a_bound_fails_loudly():
    bounds = {"decode b1": 40.0, "prefill 128": 600.0}
    measured = {"decode b1 minigpt": 63.2, "decode b1 transformers": 25.0, "prefill 128 minigpt": 417.0,
                "decode b8 minigpt": 500.0}                       # no bound for b8: not checked
    violations = limits.check_bounds(measured, bounds)
    assert len(violations) == 1 and violations[0].startswith("decode b1 minigpt: 63.2/s is 158% of the bound 40/s")
    with pytest.raises(SystemExit, match="benchmark bound exceeded"):
        limits.enforce(violations)
    assert limits.check_bounds({"decode b1 minigpt": 40.0, "prefill 128 minigpt": 599.0}, bounds) == []
    limits.enforce([])                                            # nothing above: no failure


def test_the_bound_is_the_fastest_method_and_repeat():
    """A fake clock: method a takes 3, 2, 4 ticks, b takes 5 each; a does twice b's work."""
    ticks = iter([0, 3, 3, 8, 8, 10, 10, 15, 15, 19, 19, 24])
    calls = []
    methods = {"a": (lambda: calls.append("a"), 2.0), "b": (lambda: calls.append("b"), 1.0)}
    out = limits.fastest(methods, repeats=3, clock=lambda: next(ticks))
    assert calls == ["a", "b"] + ["a", "b"] * 3                   # one warm-up each, then round robin
    assert out["method"] == "a" and out["seconds"] == 2 and out["rate"] == 1.0
    assert out["per_method_rate"] == {"a": 1.0, "b": 0.2}


def test_the_read_and_gemm_methods_do_the_work_they_are_rated_by():
    rng = np.random.default_rng(0)
    matrices = [rng.standard_normal((64, 32), dtype=np.float32), rng.standard_normal((32, 96), dtype=np.float32)]
    methods = limits.read_methods(matrices)
    assert {work for _, work in methods.values()} == {float(sum(w.nbytes for w in matrices))}
    for fn, _ in methods.values():                                # each touches every matrix
        assert len(fn()) == 2
    out = limits.fastest(methods, repeats=2)
    assert out["rate"] == max(out["per_method_rate"].values()) > 0
    (fn, flops), = limits.gemm_methods([(8, 16, 4)]).values()
    assert fn().shape == (8, 4) and flops == 2 * 8 * 16 * 4
