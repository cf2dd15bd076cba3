"""Time an ActAdd sweep: log-prob shift of 12 layers x 5 coefficients over the first 20,000
tokens of Pride and Prejudice (../shared/corpora/gutenberg/pg1342.txt), on random weights of the
real `gpt2` shape (float32), with the genuine GPT-2 tokenizer:

    python benchmarks/bench_sweep.py [--tokens 20000] [--chunk-tokens 128] [--json out.json]

The sweep computes the unsteered pass once and one steered pass per cell; the figure is the
wall time of `actadd.measure.sweep` and the tokens it scores per second (cells x tokens / time).
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

import minigpt  # noqa: E402
from actadd import measure  # noqa: E402
from conftest import write_model_folder  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--book", type=Path, default=Path(os.environ.get("MINIGPT_CORPORA", SHARED / "corpora")) / "gutenberg" / "pg1342.txt")
    parser.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("MINIGPT_GPT2_TOKENIZER", SHARED / "gpt2-tokenizer")))
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--coeffs", default="-1,1,2,4,8")
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
    cells = len(layers) * len(coeffs)
    scored = (cells + 1) * sum(len(t) - 1 for _, t in texts)  # every cell's pass plus the unsteered one
    print(f"{len(layers)} layers x {len(coeffs)} coefficients over {len(ids):,} tokens "
          f"({len(texts)} chunks of {args.chunk_tokens}): {seconds:.1f} s, {seconds / cells:.2f} s a cell, "
          f"{scored / seconds:,.0f} tokens scored/s")
    args.json.write_text(json.dumps({"layers": layers, "coeffs": coeffs, "tokens": len(ids), "chunk_tokens": args.chunk_tokens,
                                     "seconds": seconds, "tokens_scored_per_s": scored / seconds,
                                     "numpy": np.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
