"""Time an ActAdd sweep: log-prob shift of 12 layers x 2 coefficients over the first 4,000
tokens of Pride and Prejudice (../shared/corpora/gutenberg/pg1342.txt), on random weights of the
real `gpt2` shape (float32), with the genuine GPT-2 tokenizer:

    python benchmarks/bench_sweep.py [--tokens 4000] [--coeffs 1,4] [--chunk-tokens 128] [--json out.json]

`actadd.measure.sweep` computes the unsteered pass once and starts each cell's steered pass at
its layer. In the same run, the reference is the plain way: `logprob_shift` per cell, whole
passes, with the same unsteered log-probs. The table gives both wall times, tokens scored per
second (cells x tokens / time), the ratio, and whether every cell's figures agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import actadd  # noqa: E402
import minigpt  # noqa: E402
from actadd import measure  # noqa: E402
from conftest import write_model_folder  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--book", type=Path, default=Path(os.environ.get("MINIGPT_CORPORA", SHARED / "corpora")) / "gutenberg" / "pg1342.txt")
    parser.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("MINIGPT_GPT2_TOKENIZER", SHARED / "gpt2-tokenizer")))
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--coeffs", default="1,4")
    parser.add_argument("--json", type=Path, default=HERE / "bench_sweep.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    write_model_folder(folder, minigpt.GPT2Config(), seed=0)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((args.tokenizer / name).read_bytes())
    model, tok = minigpt.load(folder)
    ids = tok.encode(args.book.read_text(encoding="utf-8"))[:args.tokens]
    texts = [("pg1342", [tok.bos_token_id] + ids[i:i + args.chunk_tokens]) for i in range(0, len(ids), args.chunk_tokens)]
    coeffs = [float(c) for c in args.coeffs.split(",")]
    layers = list(range(args.layers))

    start = time.perf_counter()
    rows = measure.sweep(model, tok, "Love", "Hate", layers, coeffs, texts=texts)
    seconds = time.perf_counter() - start

    start = time.perf_counter()  # the reference: whole passes, one logprob_shift per cell
    base = measure.next_token_logprobs(model, [ids for _, ids in texts])
    reference = []
    for L in layers:
        unit = actadd.steering_vector(model, actadd.x_vector(tok, "Love", "Hate", 1.0, L))
        for c in coeffs:
            shift = measure.logprob_shift(model, texts, unit.scaled(c), unsteered=base)
            reference.append({"layer": L, "coeff": c, "alignment": "front", **shift.summary()["all"]})
    reference_seconds = time.perf_counter() - start
    assert reference == rows, "the sweep's cells differ from whole passes"

    cells = len(layers) * len(coeffs)
    scored = (cells + 1) * sum(len(t) - 1 for _, t in texts)  # every cell's pass plus the unsteered one
    print(f"{len(layers)} layers x {len(coeffs)} coefficients over {len(ids):,} tokens "
          f"({len(texts)} chunks of {args.chunk_tokens}), gpt2 shape, numpy {np.__version__}")
    print(f"{'engine':<34} {'seconds':>8} {'s a cell':>9} {'tokens scored/s':>16}")
    for name, t in (("sweep (each cell from its layer)", seconds), ("whole passes (logprob_shift)", reference_seconds)):
        print(f"{name:<34} {t:>8.1f} {t / cells:>9.2f} {scored / t:>16,.0f}")
    print(f"sweep: {reference_seconds / seconds:.2f}x faster; every cell's figures equal")
    args.json.write_text(json.dumps({"layers": layers, "coeffs": coeffs, "tokens": len(ids), "chunk_tokens": args.chunk_tokens,
                                     "seconds": seconds, "tokens_scored_per_s": scored / seconds,
                                     "whole_passes_seconds": reference_seconds, "speedup": reference_seconds / seconds,
                                     "numpy": np.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
