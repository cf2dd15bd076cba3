"""`minigpt` command line: for now, the most likely next tokens after a prompt of token ids."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .config import ConfigError
from .model import GPT2, softmax
from .weights import CheckpointError


def top_next_tokens(model: GPT2, ids: list[int], k: int) -> list[tuple[int, float, float]]:
    """(token id, logit, probability) of the k most likely tokens after `ids`, best first."""
    logits = model(ids)[0, -1]                                                 # [vocab]
    probs = softmax(logits)
    order = np.argsort(-logits, kind="stable")[:k]
    return [(int(i), float(logits[i]), float(probs[i])) for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minigpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nxt = sub.add_parser("next", help="print the top next tokens for a prompt of token ids")
    nxt.add_argument("--model", required=True, help="local Hugging Face folder or hub id (gpt2, gpt2-xl, ...)")
    nxt.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    nxt.add_argument("--ids", required=True, type=int, nargs="+", help="prompt token ids, e.g. 15496 995")
    nxt.add_argument("--top-k", type=int, default=10, help="how many tokens to show (default 10)")
    args = parser.parse_args(argv)

    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    try:
        model = GPT2.from_pretrained(args.model, revision=args.revision)
        top = top_next_tokens(model, args.ids, args.top_k)
    except (ConfigError, CheckpointError, ValueError, TypeError) as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return 2
    print(f"{model} from {args.model}")
    print(f"prompt ids: {args.ids}")
    print(f"{'rank':>4}  {'id':>6}  {'logit':>9}  {'prob':>7}")
    for rank, (i, logit, prob) in enumerate(top, 1):
        print(f"{rank:>4}  {i:>6}  {logit:>9.3f}  {prob:>7.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
