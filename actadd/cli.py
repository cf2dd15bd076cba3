"""`actadd steer`: unsteered and steered completions side by side, as in the paper."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

import minigpt
from minigpt import CheckpointError, ConfigError

from .steering import ALIGNMENTS, PADDINGS, PAPER_SAMPLING, generate, norm_report, steering_vector, x_vector
from .vector_io import VectorFileError, load, save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actadd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    steer = sub.add_parser("steer", help="steered and unsteered completions of a prompt, same seed",
                           description="Adds coeff x (resid_pre(plus) - resid_pre(minus)) at blocks.LAYER.hook_resid_pre "
                                       "of the prompt's first positions, and samples with the paper's settings.")
    steer.add_argument("--model", default="gpt2", help="local Hugging Face folder or hub id (default gpt2)")
    steer.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    steer.add_argument("--prompt", required=True, help="the prompt to complete (<|endoftext|> is prepended)")
    steer.add_argument("--plus", help="steering prompt added with +coeff")
    steer.add_argument("--minus", help="steering prompt added with -coeff (may be \"\")")
    steer.add_argument("--layer", type=int, help="block whose resid_pre is steered (0 = embeddings)")
    steer.add_argument("--coeff", type=float, help="the coefficient c")
    steer.add_argument("--pad", choices=PADDINGS, default="space", help="right-pad the shorter steering prompt "
                       "with ' ' (default, as published), <|endoftext|>, or not at all")
    steer.add_argument("--align", choices=ALIGNMENTS, default=None,
                       help="where the matrix goes: front (default), mid or back; a --vector keeps its own unless given")
    steer.add_argument("--vector", help="apply a steering vector saved with --save instead of --plus/--minus")
    steer.add_argument("--allow-other-weights", action="store_true", help="apply a --vector made on other weights")
    steer.add_argument("--save", help="write the steering vector to this .safetensors file")
    steer.add_argument("-n", type=int, default=3, help="completions of each kind (default 3)")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--max-new-tokens", type=int, default=50)
    steer.add_argument("--temperature", type=float, default=PAPER_SAMPLING["temperature"])
    steer.add_argument("--top-p", type=float, default=PAPER_SAMPLING["top_p"])
    steer.add_argument("--freq-penalty", type=float, default=PAPER_SAMPLING["freq_penalty"])
    steer.add_argument("--json", action="store_true", help="print JSON instead of columns")
    args = parser.parse_args(argv)

    recipe = [args.plus, args.minus, args.layer, args.coeff]
    if args.vector is not None and any(x is not None for x in recipe):
        parser.error("give either --vector or --plus/--minus/--layer/--coeff, not both")
    if args.vector is None and any(x is None for x in recipe):
        parser.error("--plus, --minus, --layer and --coeff are all needed (or --vector)")
    try:
        model, tok = minigpt.load(args.model, revision=args.revision)
        if args.vector is not None:
            vector = load(args.vector, model, allow_other_weights=args.allow_other_weights)
        else:
            vector = steering_vector(model, x_vector(tok, args.plus, args.minus, args.coeff, args.layer, args.pad),
                                     alignment=args.align or "front", padding=args.pad)
        args.align = args.align or vector.alignment
        if args.save:
            save(vector, args.save)
        reports = norm_report(model, tok, vector, args.prompt, alignment=args.align)
        result = generate(model, tok, args.prompt, vector, n=args.n, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, alignment=args.align, temperature=args.temperature,
                          top_p=args.top_p, freq_penalty=args.freq_penalty)
    except (ConfigError, CheckpointError, VectorFileError, ValueError, TypeError) as e:
        print(f"actadd: error: {e}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps({
            "model": args.model, "prompt": args.prompt, "prompt_tokens": result.prompt_tokens, "seed": args.seed,
            "alignment": args.align,
            "additions": [{"prompt": a.prompt, "tokens": list(a.tokens), "coeff": a.coeff, "layer": a.layer}
                          for a in vector.additions],
            "sampling": {"temperature": args.temperature, "top_p": args.top_p, "freq_penalty": args.freq_penalty,
                         "max_new_tokens": args.max_new_tokens},
            "norms": [{"layer": r.layer, "tokens": r.tokens, "steering": r.steering.tolist(),
                       "residual": r.residual.tolist()} for r in reports],
            "unsteered": result.unsteered, "steered": result.steered,
        }, indent=2))
        return 0
    terms = " ".join(f"{'+' if a.coeff >= 0 else '-'} {abs(a.coeff):g} x {a.prompt!r} @ layer {a.layer}"
                     for a in vector.additions)
    print(f"{model} from {args.model}\nsteering: {terms}, {args.align} alignment\n")
    for report in reports:
        print(report.format() + "\n")
    width = max(30, (shutil.get_terminal_size((120, 24)).columns - 3) // 2)
    for i, (plain, steered) in enumerate(zip(result.unsteered, result.steered)):
        left = textwrap.wrap(args.prompt + plain, width) or [""]
        right = textwrap.wrap(args.prompt + steered, width) or [""]
        print(f"{f'unsteered #{i} (seed {args.seed})':<{width}} | steered #{i} (seed {args.seed})")
        for k in range(max(len(left), len(right))):
            a = left[k] if k < len(left) else ""
            b = right[k] if k < len(right) else ""
            print(f"{a:<{width}} | {b}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
