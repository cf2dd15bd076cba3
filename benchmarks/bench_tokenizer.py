"""Encode throughput of minigpt's pure-Python tokenizer against Hugging Face `tokenizers` and
`tiktoken` (both Rust), on the Gutenberg books, in one process, same files, same text.

    python benchmarks/bench_tokenizer.py [--books DIR] [--tokenizer DIR] [--repeats 5] [--json out.json]

Each repeat encodes every book with every engine, in an order that rotates between repeats (the
machines are noisy); the table gives the median over repeats of the total time, with min and max,
MB/s of UTF-8 input, tokens/s, and each engine's speed relative to minigpt. minigpt "cold" clears
its word cache before each repeat (a fresh tokenizer meeting the books); "warm" keeps it. Every
engine must produce the same ids, or the benchmark stops. Needs the `test` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # reference_tokenizers.py

from minigpt import Tokenizer  # noqa: E402
from reference_tokenizers import hf_tokenizer, tiktoken_encoding  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=Path, default=Path(os.environ.get("MINIGPT_CORPORA", SHARED / "corpora")) / "gutenberg")
    parser.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("MINIGPT_GPT2_TOKENIZER", SHARED / "gpt2-tokenizer")))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=HERE / "bench_tokenizer.json")
    args = parser.parse_args()

    books = sorted(args.books.glob("*.txt"))
    if not books:
        sys.exit(f"no .txt books in {args.books}")
    texts = [b.read_text(encoding="utf-8") for b in books]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    ours = Tokenizer.from_pretrained(args.tokenizer)
    hf, tt = hf_tokenizer(args.tokenizer), tiktoken_encoding(args.tokenizer)

    engines = {
        "minigpt (cold cache)": ours.encode,  # the cache is cleared before each repeat
        "minigpt (warm cache)": ours.encode,
        "tokenizers (HF, Rust)": lambda text: hf.encode(text).ids,
        "tiktoken (Rust)": tt.encode_ordinary,
    }
    expected = [tt.encode_ordinary(t) for t in texts]
    n_tokens = sum(map(len, expected))
    for text, ids in zip(texts, expected):  # warms minigpt's cache for the "warm" row
        assert ours.encode(text) == ids and hf.encode(text).ids == ids, "engines disagree"

    times = {name: [] for name in engines}
    names = list(engines)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name == "minigpt (cold cache)":
                ours._cache.clear()
            start = time.perf_counter()
            for text, ids in zip(texts, expected):
                if engines[name](text) != ids:
                    sys.exit(f"{name} encodes differently from tiktoken")
            times[name].append(time.perf_counter() - start)

    rows = []
    base = statistics.median(times["minigpt (cold cache)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"engine": name, "median_s": med, "min_s": min(ts), "max_s": max(ts),
                     "MB_per_s": megabytes / med, "tokens_per_s": n_tokens / med, "speed_vs_minigpt_cold": base / med})

    print(f"{len(books)} books, {megabytes:.2f} MB, {n_tokens:,} tokens; {args.repeats} repeats; "
          f"Python {platform.python_version()}, {platform.machine()}")
    print(f"{'engine':<24} {'median s':>9} {'min':>7} {'max':>7} {'MB/s':>7} {'tokens/s':>11} {'x minigpt':>10}")
    for row in rows:
        print(f"{row['engine']:<24} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f} "
              f"{row['MB_per_s']:>7.2f} {row['tokens_per_s']:>11,.0f} {row['speed_vs_minigpt_cold']:>10.2f}")
    args.json.write_text(json.dumps({"books": [b.name for b in books], "megabytes": megabytes, "tokens": n_tokens,
                                     "repeats": args.repeats, "python": platform.python_version(), "rows": rows},
                                    indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
