"""The latency of one slider move in `actadd serve`: from the request to the first streamed token
and to the last, on tiny-books and on the gpt2 shape (random float32 weights, GPT-2's tokenizer).

    python benchmarks/bench_serve.py [--gpt2-tokenizer ../shared/gpt2-tokenizer] [--json out.json]

A server runs in this process (its own thread, as `actadd serve` runs it); the client sends what
the page sends when the coefficient slider moves (the whole settings, 1 completion of each kind,
40 new tokens) for 7 coefficients, after one warm-up, and reads the event stream as the page
does. Medians, min and max. Run it alone: the 2 cores are shared by client, server and BLAS.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import minigpt  # noqa: E402
from actadd.serve import Server, Steerer  # noqa: E402
from minigpt.tokenizer import Tokenizer  # noqa: E402


def slider_move(server: Server, settings: dict) -> tuple[float, float]:
    """Seconds from sending the request to its first token event, and to its done event."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
    start = time.perf_counter()
    conn.request("POST", "/api/steer", json.dumps(settings),
                 {"X-ActAdd-Token": server.token, "Content-Type": "application/json"})
    response = conn.getresponse()
    first = None
    while True:
        line = response.fp.readline()
        if not line:
            raise SystemExit("the stream ended without a done event")
        if line.startswith(b"event: token") and first is None:
            first = time.perf_counter() - start
        if line.startswith(b"event: done"):
            response.fp.readline()
            conn.close()
            return first, time.perf_counter() - start


def measure(name: str, steerer: Steerer, settings: dict) -> dict:
    server = Server(steerer, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slider_move(server, settings)                                    # warm-up
        runs = [slider_move(server, {**settings, "coeff": c}) for c in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)]
    finally:
        server.shutdown()
        server.server_close()
    first, last = ([r[i] for r in runs] for i in (0, 1))
    row = {"model": name, "repeats": len(runs), "settings": settings,
           "first_token_s": {"median": statistics.median(first), "min": min(first), "max": max(first)},
           "last_token_s": {"median": statistics.median(last), "min": min(last), "max": max(last)}}
    print(f"| {name} | {row['first_token_s']['median'] * 1000:.0f} ms ({min(first) * 1000:.0f}-{max(first) * 1000:.0f}) | "
          f"{row['last_token_s']['median'] * 1000:.0f} ms ({min(last) * 1000:.0f}-{max(last) * 1000:.0f}) |", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt2-tokenizer", type=Path, default=HERE.parent.parent / "shared" / "gpt2-tokenizer")
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_serve.json")
    args = parser.parse_args()
    settings = {"prompt": "I went up to my friend and said", "plus": "Love", "minus": "Hate", "n": 1,
                "max_new_tokens": 40, "seed": 0}
    print("| model | request -> first token | request -> last token (40 new tokens, both kinds) |")
    print("|---|---|---|")
    rows = []
    model, tok = minigpt.load("tiny-books")
    rows.append(measure("tiny-books (4 x 256)", Steerer(model, tok, "tiny-books"), {**settings, "layer": 1}))
    config = minigpt.GPT2Config()                                        # the gpt2 shape: 12 x 768
    from minigpt.weights import expected_shapes
    rng = np.random.default_rng(0)
    weights = {k: np.ones(s, np.float32) if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or k == "ln_f.weight"
               else rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for k, s in expected_shapes(config).items()}
    gpt2 = minigpt.GPT2(config, weights)
    rows.append(measure("gpt2 shape (12 x 768, random float32)",
                        Steerer(gpt2, Tokenizer.from_pretrained(args.gpt2_tokenizer), "gpt2"), {**settings, "layer": 6}))
    (args.json or HERE / "bench_serve.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
