"""No test asserts a wall-clock time: a loaded machine made `wall_s < 120` fail a whole suite once.
Speed is measured in benchmarks/; a test may compare two timings of one run (a ratio, as the
tokenizers' linearity checks do), never a timing against a fixed number of seconds."""

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"perf_counter", "time", "monotonic", "process_time", "perf_counter_ns", "monotonic_ns"}
TIMING_KEYS = ("wall", "seconds", "elapsed", "_s")


def _reads_clock(node) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CLOCKS
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "time" for n in ast.walk(node))


def _timed_names(tree) -> set[str]:
    """Names that hold a clock difference, directly or through another such name (min(), a
    container entry): `start = time.perf_counter()` alone is a reading, not a duration."""
    names: set[str] = set()
    for _ in range(3):                                 # a name built from another timed name, a few levels
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                if _is_difference(node.value) or any(isinstance(n, ast.Name) and n.id in names
                                                     for n in ast.walk(node.value)):
                    for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        base = t.value if isinstance(t, ast.Subscript) else t
                        if isinstance(base, ast.Name):
                            names.add(base.id)
    return names


def _is_difference(value) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and _reads_clock(n) for n in ast.walk(value))


def _is_timing(node, names: set[str]) -> bool:
    base = node.value if isinstance(node, ast.Subscript) else node
    if isinstance(base, ast.Name) and base.id in names:
        return True
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        key = node.slice.value
        return any(key == k or key.endswith(k) if k == "_s" else k in key for k in TIMING_KEYS)
    return False


def timed_assertions(source: str) -> list[int]:
    """Lines of `assert`s that compare a timing with a fixed number."""
    tree = ast.parse(source)
    names = _timed_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [compare.left, *compare.comparators]
            ops = compare.ops
            for (a, b), op in zip(zip(operands, operands[1:]), ops):
                if not isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)):
                    continue
                for x, y in ((a, b), (b, a)):
                    if _is_timing(x, names) and isinstance(y, ast.Constant) and isinstance(y.value, (int, float)) \
                            and y.value != 0:
                        found.append(node.lineno)
    return sorted(set(found))


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_assertion_on_wall_time(path):
    lines = timed_assertions(path.read_text())
    assert not lines, f"{path.name}: lines {lines} assert a wall-clock time; measure speed in benchmarks/ instead"


def _asserting(comparison: str) -> str:
    """A line of test source asserting `comparison`, built here so that this file's own text holds
    no timed assertion for a line-by-line check to find."""
    return "assert " + comparison + "\n"


def test_the_check_finds_timed_assertions_and_passes_ratios():
    lt = " < "
    timed = "import time\nstart = time.perf_counter()\nf()\nelapsed = time.perf_counter() - start\n"
    assert timed_assertions(timed + _asserting("elapsed" + lt + "2.0")) == [5]
    assert timed_assertions(_asserting("data['wall_s']" + lt + "120")) == [1]
    best = ("import time\ntimes = {}\nfor n in (1, 2):\n    s = time.perf_counter()\n"
            "    best = min(9, time.perf_counter() - s)\n    times[n] = best\n")
    assert timed_assertions(best + _asserting("times[2]" + lt + "2.0 and times[2]" + lt + "24 * times[1]")) == [7]
    ratio = "import time\ntimes = {}\ns = time.perf_counter()\ntimes[1] = time.perf_counter() - s\n"
    assert timed_assertions(ratio + _asserting("times[2]" + lt + "24 * max(times[1], 0.005)")) == []
    assert timed_assertions(_asserting("data['wall_s'] > 0")) == []     # recorded, not judged
