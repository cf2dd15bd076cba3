"""Throughput of `actadd eval topic` on tiny-books: one process, and a local Dask cluster of 1 and
2 worker processes, on this machine:

    python benchmarks/bench_dask.py [--samples 32] [--repeats 2] [--json benchmarks/bench_dask.json]

Each configuration runs the same topic grid (4 layers x 2 coefficients + unsteered, 40 new
tokens) into a fresh folder; samples/s counts generated completions over the run's wall time
(the cluster started beforehand, the workers' model loads included, as a user would see them).
Also reported: the cluster's start time, each worker's model load, and whether the files equal
the single process's (they must). Best of --repeats per configuration (the machines are noisy).

Dask's nanny starts workers with one BLAS thread each (OMP/OPENBLAS_NUM_THREADS=1); the single
process uses NumPy's default (all cores). On a 2-core machine 2 workers x 1 thread and 1 process x
2 threads use the same cores: what this can show is the overhead of the distribution, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import minigpt
from actadd.experiments import generation
from actadd.experiments.dask import DaskRunner

HERE = Path(__file__).resolve().parent
WORDS = ["whale", "whales", "sea", "ship", "boat", "captain"]


def run(model, tok, out: Path, samples: int, scheduler: str | None = None) -> float:
    """Seconds for the topic grid into `out`, in this process or on the cluster at `scheduler`."""
    start = time.perf_counter()
    generation.topic(model, tok, out, prompt="In the morning we", plus="whale", minus="", layers=[0, 1, 2, 3],
                     coeffs=[1.0, 4.0], words=WORDS, samples=samples, max_new_tokens=40, batch_rows=samples,
                     progress=False, scheduler=scheduler)
    return time.perf_counter() - start


def files(folder: Path) -> dict:
    return {n: (folder / n).read_bytes() for n in ("results.jsonl", "summary.json", "summary.csv")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=HERE / "bench_dask.json")
    args = parser.parse_args()
    model, tok = minigpt.load("tiny-books")
    total = 9 * args.samples
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))

    rows = []
    best = min(run(model, tok, tmp / f"one-{r}", args.samples) for r in range(args.repeats))
    reference = files(tmp / "one-0")
    rows.append({"configuration": "one process", "workers": 0, "seconds": round(best, 2),
                 "samples_per_s": round(total / best, 1), "same_files": True})
    for workers in (1, 2):
        start = time.perf_counter()
        with DaskRunner(workers=workers) as runner:
            startup = time.perf_counter() - start
            times = []
            for r in range(args.repeats):
                runner.client.restart()                     # fresh workers: each run pays its model loads
                times.append(run(model, tok, tmp / f"w{workers}-{r}", args.samples, runner.client.scheduler.address))
            loads = [entry["seconds"] for entries in runner.loads().values() for entry in entries]
        same = all(files(tmp / f"w{workers}-{r}") == reference for r in range(args.repeats))
        rows.append({"configuration": f"Dask, {workers} worker{'s' if workers > 1 else ''}", "workers": workers,
                     "seconds": round(min(times), 2), "samples_per_s": round(total / min(times), 1),
                     "cluster_start_s": round(startup, 2), "model_load_s_per_worker": [round(x, 3) for x in loads],
                     "same_files": same})

    print(f"actadd eval topic on tiny-books: {total} samples x 40 new tokens, best of {args.repeats}; "
          f"{os.cpu_count()} cores")
    print(f"{'configuration':<18} {'seconds':>8} {'samples/s':>10} {'cluster start s':>16} {'model load s/worker':>20} "
          f"{'same files':>11}")
    for r in rows:
        print(f"{r['configuration']:<18} {r['seconds']:>8} {r['samples_per_s']:>10} {r.get('cluster_start_s', '-'):>16} "
              f"{', '.join(str(x) for x in r.get('model_load_s_per_worker', [])) or '-':>20} {str(r['same_files']):>11}")
    args.json.write_text(json.dumps({"benchmark": "bench_dask", "cores": os.cpu_count(), "samples": total,
                                     "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not all(r["same_files"] for r in rows):
        raise SystemExit("a distributed run's files differ from the single process's")


if __name__ == "__main__":
    main()
