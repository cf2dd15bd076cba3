"""actadd command line: steer (completions side by side, as in the paper), the paper's
measurements (logprobs, nexttoken, sweep, reproduce), its experiments (eval topic, sentiment,
toxicity, relevance, knowledge, overhead), its GPT-2 battery in one report (paper), and the
contrast-pair instruments (pairs, calibrate, lens)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import minigpt
from minigpt import BackendError, CheckpointError, ConfigError
from minigpt.backend import BACKENDS
from minigpt.cli import BACKEND_HELP, MODEL_HELP, WEIGHTS_HELP, interruptible, weights_option
from minigpt.weights import WEIGHT_POLICIES

from . import interpret, measure, methods, pairs
from .experiments import claims, compare, data, generation, likelihood, overhead, paper
from .experiments.scorers import SENTIMENT, TOXICITY, get_scorer
from .output import json_safe, writable_file, writable_folder, write_outputs
from .pairs import READINGS
from .steering import ALIGNMENTS, PADDINGS, PAPER_SAMPLING, generate, norm_report, steering_vector, x_vector
from .vector_io import VectorFileError, load, save

ERRORS = (ConfigError, CheckpointError, BackendError, VectorFileError, ValueError, TypeError)


def main(argv: list[str] | None = None) -> int:
    return interruptible("actadd", _main, argv)               # Ctrl-C: one line, status 130


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actadd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    steer = sub.add_parser("steer", help="steered and unsteered completions of a prompt, same seed",
                           description="Adds coeff x (resid_pre(plus) - resid_pre(minus)) at blocks.LAYER.hook_resid_pre "
                                       "of the prompt's first positions, and samples with the paper's settings.")
    steer.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
    steer.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    steer.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    steer.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    steer.add_argument("--prompt", required=True, help="the prompt to complete (<|endoftext|> is prepended)")
    steer.add_argument("--plus", help="steering prompt added with +coeff")
    steer.add_argument("--minus", help="steering prompt added with -coeff (may be \"\")")
    steer.add_argument("--pairs", help="a file of 'plus<TAB>minus' lines: the mean of their differences, instead of "
                       "--plus/--minus")
    steer.add_argument("--reading", choices=READINGS, default="actadd", help="with --pairs: ActAdd's per-position "
                       "matrix (default), or the mean-difference direction at each prompt's last token or mean token")
    _add_method_args(steer)
    steer.add_argument("--positions", default=None, help="for a direction: prompt (every prompt position, "
                       "default), all (generated tokens too, as llama.cpp), or positions like 1,2,3")
    steer.add_argument("--layer", help="block whose resid_pre is steered (0 = embeddings); a list like 2,4 or 2-11 "
                       "steers each")
    steer.add_argument("--coeff", type=float, help="the coefficient c")
    steer.add_argument("--pad", choices=PADDINGS, default="space", help="right-pad the shorter steering prompt "
                       "with ' ' (default, as published), <|endoftext|>, or not at all")
    steer.add_argument("--align", choices=ALIGNMENTS, default=None,
                       help="where the matrix goes: front (default), mid or back; a --vector keeps its own unless given")
    steer.add_argument("--vector", help="apply a steering vector saved with --save instead of --plus/--minus")
    steer.add_argument("--allow-other-weights", action="store_true", help="apply a --vector made on other weights")
    steer.add_argument("--save", help="write the steering vector to this .safetensors file (a direction: or .gguf, "
                       "a llama.cpp control vector)")
    steer.add_argument("-n", "--samples", dest="n", type=int, default=3, help="completions of each kind (default 3)")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--max-new-tokens", type=int, default=50)
    steer.add_argument("--temperature", type=float, default=PAPER_SAMPLING["temperature"])
    steer.add_argument("--top-p", type=float, default=PAPER_SAMPLING["top_p"])
    steer.add_argument("--freq-penalty", type=float, default=PAPER_SAMPLING["freq_penalty"])
    steer.add_argument("--json", action="store_true", help="print JSON instead of columns")
    _add_measure_commands(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command != "steer":
        try:
            return MEASURES[args.command](parser, args)
        except ERRORS as e:
            print(f"actadd: error: {e}", file=sys.stderr)
            return 2

    _check_recipe(parser, args, minus_required=True)
    try:
        _vector_inputs(parser, args)
        model, tok = _load(args)
        vector = _vector(parser, args, model, tok)
        args.align = args.align or vector.alignment
        if args.save:
            print(f"saved {save(vector, args.save)}", file=sys.stderr)
        reports = norm_report(model, tok, vector, args.prompt, alignment=args.align)
        if vector.ablates:                        # it acts at every layer: the one its direction was read at
            reports = [r for r in reports if r.layer == vector.read_at]
        result = generate(model, tok, args.prompt, vector, n=args.n, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, alignment=args.align, temperature=args.temperature,
                          top_p=args.top_p, freq_penalty=args.freq_penalty)
    except ERRORS as e:
        print(f"actadd: error: {e}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps({
            "model": args.model, "prompt": args.prompt, "prompt_tokens": result.prompt_tokens, "seed": args.seed,
            "alignment": args.align,
            **vector.summary(),
            "sampling": {"temperature": args.temperature, "top_p": args.top_p, "freq_penalty": args.freq_penalty,
                         "max_new_tokens": args.max_new_tokens},
            "norms": [{"layer": r.layer, "tokens": r.tokens, "steering": r.steering.tolist(),
                       "residual": r.residual.tolist()} for r in reports],
            "unsteered": result.unsteered, "steered": result.steered,
        }, indent=2))
        return 0
    print(f"{model} from {args.model}\nsteering: {vector.describe(args.align)}\n")
    for report in reports:
        print(report.format() + "\n")
    width = max(30, (shutil.get_terminal_size((120, 24)).columns - 3) // 2)
    for i, (plain, steered) in enumerate(zip(result.unsteered, result.steered)):
        left = textwrap.wrap(args.prompt + plain, width) or [""]
        right = textwrap.wrap(args.prompt + steered, width) or [""]
        draws = f"(rng [{args.seed}, {i}])"                 # row i draws from default_rng([seed, i]), both columns
        print(f"{f'unsteered #{i} {draws}':<{width}} | steered #{i} {draws}")
        for k in range(max(len(left), len(right))):
            a = left[k] if k < len(left) else ""
            b = right[k] if k < len(right) else ""
            print(f"{a:<{width}} | {b}")
        print()
    print(model.memory_report())
    return 0


# ---------------------------------------------------------------------------------------------
# Measurements


def _add_model_args(p, default_model="tiny-books"):
    p.add_argument("--model", default=default_model, help=f"{MODEL_HELP} (default {default_model})")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    p.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_vector_args(p):
    p.add_argument("--plus", help="steering prompt added with +coeff")
    p.add_argument("--minus", default="", help="steering prompt added with -coeff (default \"\")")
    p.add_argument("--pairs", help="a file of 'plus<TAB>minus' lines (the mean of their differences), instead of --plus")
    p.add_argument("--reading", choices=READINGS, default="actadd",
                   help="with --pairs: actadd (per-position matrix, default), last or mean (a direction)")
    _add_method_args(p)
    p.add_argument("--positions", default=None, help="for a direction: prompt (default for --reading last/mean), all "
                   "(default for the other methods), or e.g. 1,2,3")
    p.add_argument("--layer", help="block whose resid_pre is steered (a list like 2,4 or 2-11 steers each)")
    p.add_argument("--coeff", type=float, help="the coefficient c")
    p.add_argument("--pad", choices=PADDINGS, default="space", help="right-pad the shorter steering prompt (default space)")
    p.add_argument("--align", choices=ALIGNMENTS, default="front")
    p.add_argument("--vector", help="a vector saved by --save (.safetensors, or a .gguf control vector), instead of "
                   "--plus/--layer/--coeff")
    p.add_argument("--allow-other-weights", action="store_true")


METHOD_HELP = ("the steering method (docs/methods.md): actadd (default: plus - minus, or --pairs read as --reading), "
               "mean-diff (CAA: the pairs' last-token mean difference, every position), mean-centring (--target texts' "
               "mean minus --general texts'), pca (the pairs' differences' first principal component), ablation "
               "(project the pairs' direction, read at --layer, out of every residual activation; --coeff is its "
               "strength, default 1)")


def _add_method_args(p, pairs: bool = False):
    """--method and what the other methods read (one vocabulary for every command that makes a vector)."""
    p.add_argument("--method", choices=methods.METHODS, default="actadd", help=METHOD_HELP)
    if pairs:
        p.add_argument("--pairs", help="a file of 'plus<TAB>minus' lines, for the methods made from pairs")
    p.add_argument("--target", help="mean-centring: the target texts (one a line, JSONL with 'text', or a folder of .txt)")
    p.add_argument("--general", help="mean-centring: the general texts, as --target (e.g. the OpenWebText sample)")
    p.add_argument("--recipe", choices=methods.PCA_RECIPES, default="repeng",
                   help="pca: repeng (centred differences, default) or steering-vectors (uncentred)")


def _method_inputs(parser, args) -> None:
    """The method's own inputs, checked and read before a model is loaded."""
    method = getattr(args, "method", "actadd")
    args.target_texts = args.general_texts = None
    if method == "mean-centring":
        if args.target is None or args.general is None:
            parser.error("--method mean-centring needs --target and --general texts")
        if getattr(args, "pairs", None) is not None:
            parser.error("--method mean-centring reads --target and --general texts, not --pairs")
        args.target_texts, args.general_texts = data.read_texts(args.target), data.read_texts(args.general)
    elif args.target is not None or args.general is not None:
        parser.error("--target and --general are mean-centring's texts: give them with --method mean-centring")
    if method != "actadd" and getattr(args, "reading", "actadd") != "actadd":
        parser.error(f"--reading is how --method actadd reads --pairs; --method {method} reads each pair's last token")
    if method == "pca" and getattr(args, "pairs", None) is None:
        parser.error("--method pca needs --pairs (two or more)")


def _method_vector(args, model, tok, layers, coeff, plus=None, minus=None, pair_list=None):
    """A vector of --method (not actadd) at `layers` and `coeff`."""
    positions = _positions(args.positions) if getattr(args, "positions", None) else "all"
    pair_list = pair_list if pair_list is not None else ([(plus, minus or "")] if plus is not None else [])
    if args.method == "mean-centring":
        return methods.mean_centring(model, tok, args.target_texts, args.general_texts, coeff, layers, positions)
    if args.method == "mean-diff":
        return methods.mean_diff(model, tok, pair_list, coeff, layers, positions)
    if args.method == "pca":
        return methods.pca(model, tok, pair_list, coeff, layers, positions, args.recipe)
    if len(layers) != 1:
        raise ValueError(f"--method ablation reads its direction at one layer and removes it everywhere; got --layer "
                         f"{','.join(map(str, layers))}")
    return methods.ablation(model, tok, pair_list, layers[0], 1.0 if coeff is None else coeff)


def _check_save(path: str) -> None:
    """--save names its format by its suffix: a name without one was written as safetensors
    without saying so."""
    if Path(path).suffix not in (".safetensors", ".gguf"):
        raise ValueError(f"--save {path}: end the name in .safetensors (any steering vector) or .gguf (a direction, "
                         "as a llama.cpp control vector)")
    writable_file(path, "--save")


def _check_recipe(parser, args, minus_required=False):
    """Exactly one way of giving the vector: --vector, --pairs with --layer and --coeff, or
    --plus (and --minus) with --layer and --coeff."""
    method = getattr(args, "method", "actadd")
    if method == "ablation" and args.coeff is None and args.vector is None:
        args.coeff = 1.0                                                      # its strength: remove the direction
    if method == "mean-centring" and args.vector is None:
        if args.plus is not None or args.pairs is not None:
            parser.error("--method mean-centring reads --target and --general texts, not --plus or --pairs")
        if args.layer is None or args.coeff is None:
            parser.error("--method mean-centring needs --layer and --coeff (and --target, --general)")
        return
    given = [n for n in ("plus", "pairs", "layer", "coeff") if getattr(args, n) is not None]
    if args.vector is not None:
        if given or (minus_required and args.minus is not None):
            parser.error(f"give either --vector or --plus/--minus/--layer/--coeff, not both (got --{given[0] if given else 'minus'})")
        return
    if args.plus is not None and args.pairs is not None:
        parser.error("give either --pairs or --plus/--minus, not both")
    if args.pairs is not None:
        if args.layer is None or args.coeff is None:
            parser.error("--pairs needs --layer and --coeff")
        return
    if args.plus is None or args.layer is None or args.coeff is None or (minus_required and args.minus is None):
        parser.error(("--plus, --minus, --layer and --coeff are all needed" if minus_required
                      else "--plus, --layer and --coeff are needed") + " (or --pairs, or --vector)")


def _positions(text: str):
    return text if text in ("prompt", "all") else tuple(_numbers(text, int, "--positions"))


def _load(args):
    """The model and tokenizer: after everything the command can check without them."""
    return minigpt.load(args.model, revision=args.revision, backend=args.backend, **weights_option(args))


def _vector_inputs(parser, args) -> None:
    """The vector's recipe and files, checked before a model is loaded: a pairs file read, a
    --vector file that exists, a --save place that can be written."""
    _check_recipe(parser, args)
    args.pair_list = pairs.read_pairs(args.pairs) if args.pairs is not None else None
    if args.vector is not None and not Path(args.vector).is_file():
        raise ValueError(f"--vector {args.vector}: no such file")
    if getattr(args, "save", None):
        _check_save(args.save)
    if args.layer is not None:
        _numbers(args.layer, int, "--layer")                             # a typo in a list: now, not after loading
    if args.positions is not None:
        _positions(args.positions)
    _method_inputs(parser, args)


def _vector(parser, args, model, tok):
    _check_recipe(parser, args)
    if args.vector is not None:
        return load(args.vector, model, allow_other_weights=args.allow_other_weights)
    layers = _numbers(args.layer, int, "--layer")
    contrast = None
    if args.pairs is not None:
        contrast = args.pair_list if getattr(args, "pair_list", None) is not None else pairs.read_pairs(args.pairs)
    if getattr(args, "method", "actadd") != "actadd":
        return _method_vector(args, model, tok, layers, args.coeff, args.plus, args.minus, contrast)
    if args.pairs is not None:
        vector = pairs.mean_of_pairs(model, tok, contrast, args.coeff, layers, args.reading, args.pad,
                                     _positions(args.positions or "prompt"))
        return vector if args.reading != "actadd" else replace(vector, alignment=args.align or "front")
    additions = [a for L in layers for a in x_vector(tok, args.plus, args.minus, args.coeff, L, args.pad)]
    return steering_vector(model, additions, alignment=args.align or "front", padding=args.pad)


def _corpus_args(p, required=True):
    p.add_argument("--corpus", required=required, help="a text file, or a folder of .txt files (grouped by file)")
    p.add_argument("--split", choices=measure.SPLITS, default="sentences",
                   help="sentences (default), chunks of --chunk-tokens, lines, or 'text<TAB>label' lines (grouped by label)")
    p.add_argument("--chunk-tokens", type=int, default=128)
    p.add_argument("--no-mask", action="store_true", help="keep the predictions made at the steered positions "
                   "(masked by default, as the original)")
    p.add_argument("--skip-short", action="store_true", help="leave out texts shorter than the steering matrix")


def _add_measure_commands(sub):
    p = sub.add_parser("logprobs", help="log-prob shift and perplexity ratio of a corpus, per group")
    _add_model_args(p)
    _add_vector_args(p)
    _corpus_args(p)
    p = sub.add_parser("nexttoken", help="the tokens that carry KL(steered || unsteered) after a prompt")
    _add_model_args(p)
    _add_vector_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("-k", type=int, default=10, help="how many tokens (default 10)")
    p.add_argument("--topic", nargs="*", default=(), help="strings whose tokens form the set A for effectiveness "
                   "and disruption (each must be one token, e.g. ' wedding')")
    p = sub.add_parser("sweep", help="a metric over layers x coefficients (x alignments): CSV, JSON, PNG")
    _add_model_args(p)
    p.add_argument("--plus", help="steering prompt (--method actadd, or one pair for the pair methods)")
    p.add_argument("--minus", default="")
    _add_method_args(p, pairs=True)
    p.add_argument("--positions", default=None, help="for a direction: all (default), prompt, or e.g. 1,2,3")
    p.add_argument("--pad", choices=PADDINGS, default="space")
    p.add_argument("--layers", required=True, help="e.g. 0,6,12 or 0-11")
    p.add_argument("--coeffs", required=True, help="e.g. --coeffs=-1,0,1,2,4 (with '=' when the list starts with '-')")
    p.add_argument("--align", default="front", help="comma-separated alignments (default front)")
    _corpus_args(p, required=False)
    p.add_argument("--prompt", help="also (or instead) the next-token KL after this prompt")
    p.add_argument("--topic", nargs="*", default=(), help="with --prompt: token strings for effectiveness/disruption")
    p.add_argument("--out", required=True, help="output folder: writes sweep.csv, sweep.json and sweep.png there "
                   "(before 0.3, a file prefix)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("reproduce", help="the original library's numbers on gpt2-xl, beside ours")
    _add_model_args(p, default_model="gpt2-xl")
    _add_eval_commands(sub)
    _add_paper_command(sub)
    _add_compare_command(sub)
    _add_pair_commands(sub)
    p = sub.add_parser("serve", help="a local web page to steer the model by hand (prints its URL with a token)")
    p.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    p.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 lets others on the network in, with a warning)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")


def _add_pair_commands(sub):
    p = sub.add_parser("pairs", help="which contrast pairs carry the effect: norms, cosines, effect alone, leave-one-out",
                       description="Writes OUT/summary.json, OUT/summary.csv (one row per pair) and OUT/pairs.png "
                                   "(the pairs' cosine matrix and their effects).")
    _add_model_args(p)
    p.add_argument("--pairs", required=True, help="a file of 'plus<TAB>minus' lines")
    p.add_argument("--layer", type=int, required=True, help="the block whose resid_pre is steered")
    p.add_argument("--coeff", type=float, required=True, help="the coefficient of the mean vector and of each pair's")
    p.add_argument("--reading", choices=READINGS, default="actadd",
                   help="actadd (per-position matrix, default), last or mean (the mean-difference direction)")
    p.add_argument("--pad", choices=PADDINGS, default="space", help="the actadd reading's padding (default space)")
    p.add_argument("--prompt", help="metric: next-token effectiveness of --topic tokens after this prompt")
    p.add_argument("--topic", nargs="*", default=(), help="with --prompt: the token set A (single tokens, e.g. ' sea')")
    _corpus_args(p, required=False)
    p.add_argument("--min-cosine", type=float, default=0.0,
                   help="flag a pair whose cosine with the mean of the others is below this (default 0)")
    p.add_argument("--controls", type=int, default=8, help="random vectors of the mean's size, the noise to read "
                   "its effect against (default 8)")
    p.add_argument("--seed", type=int, default=0, help="the controls' seed (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save", help="also write the mean vector (.safetensors; a direction also .gguf)")
    p.add_argument("--save-layers", help="with --save and a direction reading: its layers, e.g. 2-11 (default --layer)")
    p.add_argument("--positions", default="prompt", help="the saved direction's positions: prompt (default), all, 1,2,3")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("calibrate", help="the coefficient that makes the vector 0.5x, 1x, 2x the residual stream, per layer",
                       description="Writes OUT/summary.json, OUT/summary.csv and OUT/calibrate.png.")
    _add_model_args(p)
    p.add_argument("--plus", help="steering prompt (or --pairs)")
    p.add_argument("--minus", default="", help="default \"\"")
    p.add_argument("--pairs", help="a file of 'plus<TAB>minus' lines")
    p.add_argument("--reading", choices=READINGS, default="actadd")
    p.add_argument("--pad", choices=PADDINGS, default="space")
    p.add_argument("--prompt", required=True, help="the prompt whose residual stream sizes the vector")
    p.add_argument("--layers", help="e.g. 0-11 (default every layer)")
    p.add_argument("--ratios", default="0.5,1,2", help="fractions of the residual stream's norm (default 0.5,1,2)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("lens", help="the vector through the unembedding, and its effect on each later layer (logit lens)",
                       description="A heuristic. Writes OUT/summary.json, OUT/summary.csv and, with --prompt, OUT/lens.png.")
    _add_model_args(p)
    _add_vector_args(p)
    p.add_argument("--prompt", help="also: the change of each later layer's logit-lens distribution on this prompt")
    p.add_argument("-k", type=int, default=10, help="tokens per list (default 10)")
    p.add_argument("--out", required=True, help="output folder")


def _add_eval_commands(sub):
    p = sub.add_parser("eval", help="the paper's experiments: topic, sentiment, toxicity (results resume)",
                       description="Each task writes OUT/results.jsonl (every sample as it is finished; rerunning "
                                   "the same command resumes it), OUT/summary.json, OUT/summary.csv and OUT/TASK.png.")
    tasks = p.add_subparsers(dest="task", required=True)
    topic = tasks.add_parser("topic", help="topic words in completions, over layers x coefficients (the wedding study)")
    topic.add_argument("--prompt", default=generation.TOPIC_PROMPT, help=f"default {generation.TOPIC_PROMPT!r}")
    topic.add_argument("--plus", default=" weddings", help="default ' weddings'")
    topic.add_argument("--minus", default="", help="default ''")
    topic.add_argument("--layers", help="e.g. 0-47 or 0,6,16 (default: every layer)")
    topic.add_argument("--coeffs", default="1", help="e.g. --coeffs=-1,1,4 (default 1)")
    topic.add_argument("--words", default=",".join(data.WEDDING_WORDS),
                       help="comma-separated topic words, whole words, any case (default the paper's wedding words)")
    sentiment = tasks.add_parser("sentiment", help="NegToPos / PosToNeg: success rate by a sentiment scorer")
    sentiment.add_argument("--data", required=True, help="'text<TAB>label' lines, JSONL, or a folder (pos/ and neg/ "
                           "subfolders, or such files)")
    sentiment.add_argument("--text-field", default="text", help="JSONL: the text's field (dotted for nested)")
    sentiment.add_argument("--label-field", default="label", help="JSONL: the label's field (0/1, neg/pos)")
    sentiment.add_argument("--html-breaks", action="store_true", help="make each <br /> tag a line break (IMDb's raw "
                           "reviews, for a model trained on clean text such as tiny-imdb)")
    sentiment.add_argument("--direction", choices=list(generation.DIRECTIONS), default="neg-to-pos")
    sentiment.add_argument("--plus", help="default Love (neg-to-pos) or Hate (pos-to-neg)")
    sentiment.add_argument("--minus", help="default Hate (neg-to-pos) or Love (pos-to-neg)")
    sentiment.add_argument("--prefix", help="the prompting baseline's text before the prompt (default: PLUS and a space)")
    sentiment.add_argument("--truncate", type=int, default=32, help="prompt tokens kept (default 32, as the paper)")
    toxicity = tasks.add_parser("toxicity", help="RealToxicityPrompts: mean score, fraction over 0.5, expected maximum")
    toxicity.add_argument("--data", required=True, help="JSONL prompts (RealToxicityPrompts format), or one a line")
    toxicity.add_argument("--field", default="prompt.text", help="JSONL: the prompt's field (default prompt.text)")
    toxicity.add_argument("--plus", default="Love")
    toxicity.add_argument("--minus", default="Hate")
    for task, samples, tokens in ((topic, 200, 40), (sentiment, 1, 64), (toxicity, 25, 32)):
        _add_method_args(task, pairs=True)
        task.add_argument("--positions", default=None, help="for a direction: all (default), prompt, or e.g. 1,2,3")
        task.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
        task.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
        task.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
        task.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
        task.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes it)")
        task.add_argument("-n", "--samples", type=int, default=samples, help=f"samples per prompt (default {samples})")
        task.add_argument("--max-new-tokens", type=int, default=tokens, help=f"default {tokens}")
        task.add_argument("--seed", type=int, default=0)
        task.add_argument("--temperature", type=float, default=PAPER_SAMPLING["temperature"])
        task.add_argument("--top-p", type=float, default=PAPER_SAMPLING["top_p"])
        task.add_argument("--freq-penalty", type=float, default=PAPER_SAMPLING["freq_penalty"])
        task.add_argument("--pad", choices=PADDINGS, default="space")
        task.add_argument("--batch-rows", type=int, default=64, help="rows generated together (default 64)")
        task.add_argument("--fluency-model", help="the model whose perplexity judges fluency (default: the model)")
        task.add_argument("--relevance-model", help="a sentence-transformers model for prompt-continuation "
                          "similarity, e.g. sentence-transformers/all-MiniLM-L6-v2 (needs the eval-hf extra)")
        task.add_argument("--no-progress", action="store_true")
        task.add_argument("--json", action="store_true", help="print the summary as JSON")
        _add_dask_args(task)
        if task is not topic:
            task.add_argument("--layer", type=int, required=True, help="block whose resid_pre is steered")
            task.add_argument("--coeff", type=float, required=True)
            task.add_argument("--limit", type=int, help="the first N prompts only")
            task.add_argument("--scorer", default="vader" if task is sentiment else "profanity",
                              help=("vader, imdb (the shipped TF-IDF classifier), tfidf:FILE or hf:MODEL"
                                    if task is sentiment else "profanity, toxicity (the shipped TF-IDF classifier), tfidf:FILE, "
                                    "perspective or hf:MODEL") +
                              f" (default {'vader' if task is sentiment else 'profanity'})")
            task.add_argument("--scorer-label", help="hf: the classifier's label whose probability is the score")
            task.add_argument("--device", help="hf: the classifier's torch device (e.g. cuda:0)")

    relevance = tasks.add_parser("relevance", help="perplexity by relevance: chunks binned by topic-word density")
    relevance.add_argument("--data", required=True, help="JSONL documents (text at --field), a .txt file, or a folder "
                           "of .txt files (the paper: OpenWebText)")
    relevance.add_argument("--field", default="text", help="JSONL: the text's field (default text)")
    relevance.add_argument("--words", default=",".join(data.WEDDING_WORDS),
                           help="comma-separated topic words (default the paper's wedding words)")
    relevance.add_argument("--chunk-tokens", type=int, default=100, help="tokens a chunk (default 100, as the paper)")
    relevance.add_argument("--bins", help="relevance bin edges for chunks with a topic word, e.g. 0,0.01,0.02,1 "
                           "(default: quantiles)")
    relevance.add_argument("--quantiles", type=int, default=4, help="quantile bins of the relevant chunks (default 4)")
    relevance.add_argument("--max-chunks", type=int, help="at most N chunks: the most relevant half, the rest drawn "
                           "from chunks without a topic word (as the authors picked documents)")
    relevance.add_argument("--seed", type=int, default=0, help="draws the unrelated chunks with --max-chunks")
    knowledge = tasks.add_parser("knowledge", help="P@K on LAMA's facts (ConceptNet, Google-RE, T-REx), unsteered and "
                                 "steered")
    knowledge.add_argument("--data", required=True, help="LAMA's data folder (ConceptNet/, Google_RE/, TREx/ and "
                           "relations.jsonl) or one of its JSONL files, in LAMA's own schemas")
    knowledge.add_argument("--limit", type=int, help="the first N facts only")
    for task in (relevance, knowledge):
        task.add_argument("--model", default="tiny-books", help=MODEL_HELP + " (default tiny-books)")
        task.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
        task.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
        task.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
        task.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes it)")
        task.add_argument("--plus", default=" weddings", help="default ' weddings'")
        task.add_argument("--minus", default="", help="default ''")
        task.add_argument("--layer", type=int, help="default: the paper's 16 of 48 at the same fraction of this model")
        task.add_argument("--coeff", type=float, default=1.0, help="default 1")
        task.add_argument("--pad", choices=PADDINGS, default="space")
        task.add_argument("--no-progress", action="store_true")
        task.add_argument("--json", action="store_true", help="print the summary as JSON")
        _add_dask_args(task)
    cost = tasks.add_parser("overhead", help="the time premium of steering: forward passes and generation")
    which = cost.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=MODEL_HELP)
    which.add_argument("--shape", choices=list(overhead.SHAPES), help="random weights of a GPT-2 shape")
    cost.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    cost.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    cost.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    cost.add_argument("--out", required=True, help="output folder")
    cost.add_argument("--layer", type=int, help="steered block (default the middle one, as the paper)")
    cost.add_argument("--batch", type=int, default=32, help="forward pass rows (default 32, as the paper)")
    cost.add_argument("--tokens", type=int, default=64, help="forward pass tokens a row (default 64, as the paper)")
    cost.add_argument("--repeats", type=int, default=20, help="alternating repeats (default 20; the paper: 1000)")
    cost.add_argument("--generate-rows", type=int, default=8)
    cost.add_argument("--prompt-tokens", type=int, default=16)
    cost.add_argument("--new-tokens", type=int, default=32)
    cost.add_argument("--no-control", action="store_true", help="skip timing the unsteered work twice (the noise floor)")
    cost.add_argument("--seed", type=int, default=0)
    cost.add_argument("--no-progress", action="store_true")
    cost.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_dask_args(task):
    where = task.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run the batches on a local Dask cluster of this many processes, "
                       "each loading the model once (the dask extra); same records as one process")
    where.add_argument("--scheduler", help="run them on the Dask cluster whose scheduler is at this address "
                       "(e.g. tcp://10.0.0.5:8786; dask-cuda for one worker per GPU)")
    task.add_argument("--worker-backend", choices=BACKENDS, help="the Dask workers' backend, if not --backend's "
                      "(e.g. a CPU client with --backend numpy driving GPU workers with cupy)")


def _add_compare_command(sub):
    p = sub.add_parser("compare", help="ActAdd beside mean-diff, mean-centring, pca, ablation and prompting: one table",
                       description="Each method at the setting its dev data chose under one fluency budget "
                                   f"(perplexity <= {compare.FLUENCY_BUDGET:g}x unsteered), then on the test prompts "
                                   "against unsteered and against prompting, with its cost and its example-count "
                                   "curve: OUT/compare.md, .json, .csv, .png (docs/methods.md). Reruns resume.")
    _add_model_args(p, default_model="tiny-imdb")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--sentiment-data", help="labelled test reviews (IMDb test.jsonl): both directions")
    p.add_argument("--sentiment-dev-data", help="labelled dev reviews (IMDb train.jsonl): dev prompts, pairs and "
                   "mean-centring's targets")
    p.add_argument("--toxicity-data", help="RealToxicityPrompts JSONL (test prompts)")
    p.add_argument("--toxicity-dev-data", help="the Davidson tweets' labeled_data.jsonl: dev prompts (its dev split), "
                   "pairs and targets (its held-out split)")
    p.add_argument("--general", help="mean-centring's general texts (the OpenWebText sample's JSONL); default the "
                   "dev texts of both kinds")
    p.add_argument("--methods", default=",".join(methods.METHODS), help="comma-separated, default all")
    p.add_argument("--layers", help="the grid's layers, e.g. 2,6,20 (default: the first tenth, two-thirds, and the "
                   "ICLR setting's layer at this depth)")
    p.add_argument("--sentiment-scorer", default="imdb", help="default imdb (offline)")
    p.add_argument("--toxicity-scorer", default="toxicity", help="default toxicity (offline)")
    p.add_argument("--quick", action="store_true", help="a few prompts of each kind: a demonstration in minutes")
    for name, default in compare.SIZES["full"].items():
        if name in ("repeats", "layers"):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "curve":
            p.add_argument(flag, help=f"example counts of the curve (default {','.join(map(str, default))})")
        else:
            p.add_argument(flag, type=int, help=f"default {default}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-rows", type=int, default=64, help="rows generated together (default 64)")
    p.add_argument("--no-progress", action="store_true")


def _compare(parser, args):
    writable_folder(args.out, "--out")
    which = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in which:
        if m not in methods.METHODS:
            parser.error(f"--methods {m!r}: expected some of {', '.join(methods.METHODS)}")
    compare.check_tasks(args.sentiment_data, args.sentiment_dev_data, args.toxicity_data, args.toxicity_dev_data)
    sizes = {k: getattr(args, k) for k in compare.SIZES["full"] if k != "curve" and getattr(args, k, None) is not None}
    if args.curve is not None:
        sizes["curve"] = tuple(_numbers(args.curve, int, "--curve"))
    scorers = {}
    if args.sentiment_data is not None:
        scorers["sentiment_scorer"] = get_scorer(args.sentiment_scorer, SENTIMENT)
    if args.toxicity_data is not None:
        scorers["toxicity_scorer"] = get_scorer(args.toxicity_scorer, TOXICITY)
    grid = _numbers(args.layers, int, "--layers") if args.layers else None
    model, tok = _load(args)
    report = compare.compare(model, tok, args.out, model_name=args.model, sentiment_data=args.sentiment_data,
                             sentiment_dev_data=args.sentiment_dev_data, toxicity_data=args.toxicity_data,
                             toxicity_dev_data=args.toxicity_dev_data, general_data=args.general, which=which,
                             quick=args.quick, sizes=sizes, seed=args.seed, batch_rows=args.batch_rows,
                             progress=not args.no_progress, command=command_line(args.argv),
                             layers=grid, **scorers)
    if args.json:
        print(json.dumps(json_safe(report), indent=2))
    else:
        print(compare.table(report))
        print(f"wrote {Path(args.out) / 'compare.md'}, compare.json, compare.csv, compare.png")
    return 0


def _add_paper_command(sub):
    p = sub.add_parser("paper", help="the paper's GPT-2 battery: topic, relevance, knowledge, overhead, REPORT.md",
                       description="Runs the paper's GPT-2 experiments with its settings (layers rescaled to the "
                                   "model's depth) into OUT/: one folder per experiment (JSON, CSV, PNG), "
                                   "OUT/paper.json and OUT/REPORT.md, our figures beside the paper's claims.")
    p.add_argument("--model", default="tiny-books", help=MODEL_HELP + "; gpt2-xl for the paper's model, tiny-books "
                   "(the default), smollm2-135m or gemma3-270m offline")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (hub ids only)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help=BACKEND_HELP)
    p.add_argument("--weights", choices=WEIGHT_POLICIES, help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, help="output folder (reruns resume each experiment)")
    p.add_argument("--quick", action="store_true", help="4 topic layers x 32 samples, 300 chunks, 200 facts, "
                   "3 timing repeats: a demonstration in under 2 minutes on tiny-books")
    p.add_argument("--relevance-data", help="OpenWebText documents (JSONL with a text field, or .txt files); "
                   "skipped if not given")
    p.add_argument("--lama", help="LAMA's data: its folder (ConceptNet/, Google_RE/, TREx/ with relations.jsonl) or "
                   "one file, e.g. ConceptNet/test.jsonl; skipped if not given")
    p.add_argument("--layers", help="topic layers, e.g. 0-47 (default every layer; --quick: 4)")
    p.add_argument("--preset", choices=sorted(claims.PRESETS), default="v5",
                   help="the paper's version whose sentiment and toxicity settings are run and whose figures are "
                        "compared: v5 (arXiv v5 notebooks, LLaMA-3-8B) or iclr2025 (LLaMA-3.1-8B); default v5")
    p.add_argument("--sentiment-data", help="labelled reviews (IMDb test.jsonl; <br /> read as line breaks); "
                   "skipped if not given")
    p.add_argument("--sentiment-model", help="the model for sentiment, if not --model (tiny-imdb offline)")
    p.add_argument("--sentiment-scorer", help="default the preset's (a hub classifier); imdb offline; several, "
                   "comma-separated (e.g. imdb,vader): the first judges the claim, the rest side by side")
    p.add_argument("--sentiment-dev-data", help="labelled reviews never used as test prompts (IMDb train.jsonl): "
                   "the layer and coefficient are searched there first (the report's appendix); default the preset's")
    p.add_argument("--toxicity-data", help="RealToxicityPrompts JSONL; skipped if not given")
    p.add_argument("--toxicity-scorer", help="default the preset's (perspective); toxicity or profanity offline; "
                   "several, comma-separated (e.g. toxicity,profanity): the first judges the claim")
    p.add_argument("--toxicity-dev-data", help="dev prompts for the toxicity search: the Davidson tweets' "
                   "labeled_data.jsonl (its dev split) or a prompt file; default the preset's setting")
    p.add_argument("--topic-samples", type=int, help="completions per topic layer (default 200; --quick 32)")
    p.add_argument("--chunks", type=int, help="relevance chunks, the most relevant half first (default all)")
    p.add_argument("--facts", type=int, help="LAMA facts, taken evenly over the groups (default all)")
    p.add_argument("--prompts", type=int, help="sentiment prompts a direction and toxicity prompts (default the "
                   "preset's 1,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the claims table (each row's estimate, interval, n "
                   "and verdict) as JSON")
    p.add_argument("--rerun", action="append", choices=["overhead"], default=[],
                   help="time overhead again (a rerun into the same --out keeps the first run's timings, as every "
                        "other experiment resumes)")
    _add_dask_args(p)


def _logprobs(parser, args):
    _vector_inputs(parser, args)
    measure.corpus_files(args.corpus)
    model, tok = _load(args)
    vector = _vector(parser, args, model, tok)
    texts = measure.read_corpus(args.corpus, tok, args.split, args.chunk_tokens)
    summary = measure.logprob_shift(model, texts, vector, mask=not args.no_mask, skip_short=args.skip_short).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'group':<28} {'texts':>6} {'tokens':>8} {'mean logprob diff':>18} {'perplexity ratio':>17}")
    for group, row in summary.items():
        print(f"{group:<28} {row['texts']:>6} {row['tokens']:>8} {row['mean_logprob_diff']:>18.5f} "
              f"{row['perplexity_ratio']:>17.5f}")
    return 0


def _topic_ids(tok, strings):
    ids = []
    for s in strings:
        encoded = tok.encode(s)
        if len(encoded) != 1:
            raise ValueError(f"topic string {s!r} is {len(encoded)} tokens {tok.token_strs(encoded)}; give single tokens")
        ids += encoded
    return ids


def _nexttoken(parser, args):
    _vector_inputs(parser, args)
    model, tok = _load(args)
    vector = _vector(parser, args, model, tok)
    nt = measure.next_token(model, tok, args.prompt, vector)
    topic = _topic_ids(tok, args.topic)
    rows = [{"token": tok.token_str(t), "id": t, "kl_contribution": c, "steered": q, "unsteered": p, "ratio": r}
            for t, c, q, p, r in nt.top(args.k)]
    extra = {"effectiveness": nt.effectiveness(topic), "disruption": nt.disruption(topic)} if topic else {}
    if args.json:
        print(json.dumps({"prompt": args.prompt, "kl": nt.kl, "top": rows, **extra}, indent=2))
        return 0
    print(f"KL(steered || unsteered) after {args.prompt!r}: {nt.kl:.5f}")
    print(f"{'token':<18} {'KL part':>9} {'steered p':>10} {'unsteered p':>12} {'ratio':>8}")
    for r in rows:
        print(f"{r['token']!r:<18} {r['kl_contribution']:>9.5f} {r['steered']:>10.5f} {r['unsteered']:>12.5f} {r['ratio']:>8.3f}")
    for name, value in extra.items():
        print(f"{name} over {args.topic}: {value:.5f}")
    return 0


def _numbers(text, kind, what):
    values = []
    for part in text.split(","):
        part = part.strip()
        if kind is int and "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            values += list(range(int(lo), int(hi) + 1))
        else:
            try:
                values.append(kind(part))
            except ValueError:
                raise ValueError(f"{what}: {part!r} is not a number") from None
    return values


def _sweep(parser, args):
    if args.corpus is None and args.prompt is None:
        parser.error("give --corpus (log-prob shift) and/or --prompt (next-token KL)")
    layers, coeffs = _numbers(args.layers, int, "--layers"), _numbers(args.coeffs, float, "--coeffs")
    alignments = [a.strip() for a in args.align.split(",")]
    for a in alignments:
        if a not in ALIGNMENTS:
            parser.error(f"--align {a!r}: expected one of {ALIGNMENTS}")
    if args.corpus:
        measure.corpus_files(args.corpus)
    args.pair_list = pairs.read_pairs(args.pairs) if args.pairs is not None else None
    if args.method == "actadd" and (args.plus is None or args.pairs is not None):
        parser.error("--method actadd sweeps --plus (and --minus); --pairs are for the other methods")
    if args.method in ("mean-diff", "ablation") and args.plus is None and args.pairs is None:
        parser.error(f"--method {args.method} needs --pairs (or --plus and --minus as one pair)")
    args.reading = "actadd"
    _method_inputs(parser, args)
    if Path(args.out).suffix in (".csv", ".json", ".png"):
        parser.error(f"--out {args.out}: a folder now, as for every command (sweep.csv, sweep.json and sweep.png go "
                     "in it), not a file name")
    writable_folder(args.out, "--out")
    model, tok = _load(args)
    texts = measure.read_corpus(args.corpus, tok, args.split, args.chunk_tokens) if args.corpus else None
    recipe = dict(plus=args.plus, minus=args.minus)
    if args.method != "actadd":                   # each layer's vector at coefficient 1 (ablation: strength 1)
        recipe = dict(plus=None, minus=None, unit_vector=lambda L: _method_vector(
            args, model, tok, [L], 1.0, args.plus, args.minus, args.pair_list))
    rows = measure.sweep(model, tok, **recipe, layers=layers, coeffs=coeffs, alignments=alignments, padding=args.pad,
                         texts=texts, prompt=args.prompt, topic_tokens=_topic_ids(tok, args.topic),
                         mask=not args.no_mask, skip_short=args.skip_short, progress=not args.no_progress)
    written = measure.write_sweep(rows, Path(args.out) / "sweep")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _eval(parser, args):
    if args.task in ("relevance", "knowledge", "overhead"):
        return _eval_likelihood(parser, args)
    # Everything that can be wrong without a model is found before one is loaded.
    writable_folder(args.out, "--out")
    args.pair_list = pairs.read_pairs(args.pairs) if args.pairs is not None else None
    if args.method == "actadd" and args.pairs is not None:
        parser.error("--pairs are for the other methods (--method mean-diff, pca, ablation); eval's ActAdd is --plus - "
                     "--minus")
    _method_inputs(parser, args)
    if args.task == "topic":
        layers = _numbers(args.layers, int, "--layers") if args.layers else None
        coeffs = _numbers(args.coeffs, float, "--coeffs")
    else:
        inputs = (data.read_labelled(args.data, args.text_field, args.label_field, html_breaks=args.html_breaks)
                  if args.task == "sentiment"
                  else data.read_prompts(args.data, args.field))
        scorer = get_scorer(args.scorer, SENTIMENT if args.task == "sentiment" else TOXICITY, device=args.device,
                            label=args.scorer_label)
    model, tok = _load(args)
    fluency = (minigpt.load(args.fluency_model, backend=args.backend, **weights_option(args))
               if args.fluency_model else None)
    common = dict(samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed, padding=args.pad,
                  fluency_model=fluency, relevance_model=args.relevance_model, batch_rows=args.batch_rows,
                  progress=not args.no_progress, temperature=args.temperature, top_p=args.top_p,
                  freq_penalty=args.freq_penalty, workers=args.workers, scheduler=args.scheduler,
                  worker_backend=args.worker_backend)
    if args.task == "topic":
        words = [w for w in args.words.split(",") if w.strip()]
        unit = None if args.method == "actadd" else (
            lambda L: _method_vector(args, model, tok, [L], 1.0, args.plus, args.minus, args.pair_list))
        run = generation.topic(model, tok, args.out, prompt=args.prompt, plus=args.plus, minus=args.minus, layers=layers,
                               coeffs=coeffs, words=words, unit_vector=unit, **common)
    else:
        scoring = dict(layer=args.layer, coeff=args.coeff, limit=args.limit, scorer=scorer)
        if args.method != "actadd":               # the method's vector, in place of plus - minus at layer x coeff
            plus, minus = args.plus, args.minus
            if args.task == "sentiment":
                _, _, default_plus, default_minus = generation.DIRECTIONS[args.direction]
                plus, minus = plus or default_plus, default_minus if minus is None else minus
            scoring.update(layer=None, coeff=None, vector=_method_vector(args, model, tok, [args.layer], args.coeff,
                                                                          plus, minus, args.pair_list))
        if args.task == "sentiment":
            run = generation.sentiment(model, tok, inputs, args.out, direction=args.direction, plus=args.plus,
                                       minus=args.minus, prefix=args.prefix, truncate=args.truncate, **scoring, **common)
        else:
            run = generation.toxicity(model, tok, inputs, args.out, plus=args.plus, minus=args.minus, **scoring, **common)
    if args.json:
        print(json.dumps(json_safe(run.summary), indent=2))
    else:
        print(generation.table(run.summary))
        print("wrote " + ", ".join(str(p) for p in [Path(args.out) / "results.jsonl", *run.written]))
    return 0


def _eval_likelihood(parser, args):
    writable_folder(args.out, "--out")
    if args.task == "overhead":
        if args.shape:
            model = overhead.random_model(args.shape, seed=args.seed, backend=args.backend)
        else:
            model, _ = _load(args)
        summary = overhead.overhead(model, layer=args.layer, batch=args.batch, tokens=args.tokens, repeats=args.repeats,
                                    generate_rows=args.generate_rows, prompt_tokens=args.prompt_tokens,
                                    new_tokens=args.new_tokens, control=not args.no_control, seed=args.seed,
                                    progress=not args.no_progress)
        summary["model"] = args.shape and f"random weights, {args.shape} shape" or args.model
        written = overhead.write(summary, args.out)
        print(json.dumps(json_safe(summary), indent=2) if args.json else overhead.overhead_table(summary))
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in written))
        return 0
    common = dict(plus=args.plus, minus=args.minus, layer=args.layer, coeff=args.coeff, padding=args.pad,
                  progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler,
                  worker_backend=args.worker_backend)
    if args.task == "relevance":
        documents = data.read_documents(args.data, args.field)
        edges = _numbers(args.bins, float, "--bins") if args.bins else None
        model, tok = _load(args)
        words = [w for w in args.words.split(",") if w.strip()]
        result = likelihood.relevance(model, tok, documents, args.out,
                                      words=words, chunk_tokens=args.chunk_tokens, edges=edges, quantiles=args.quantiles,
                                      max_chunks=args.max_chunks, seed=args.seed, **common)
        text = likelihood.relevance_table(result.summary)
    else:                                   # the facts need the tokenizer (one-token objects), not the model
        facts, skipped = data.read_lama(args.data, minigpt.Tokenizer.from_pretrained(args.model, revision=args.revision))
        model, tok = _load(args)
        result = likelihood.knowledge(model, tok, facts, args.out, limit=args.limit, skipped=skipped, **common)
        text = likelihood.knowledge_table(result.summary)
    if args.json:
        print(json.dumps(json_safe(result.summary), indent=2))
    else:
        print(text)
        print("wrote " + ", ".join(str(p) for p in [Path(args.out) / "results.jsonl", *result.written]))
    return 0


def _paper(parser, args):
    writable_folder(args.out, "--out")
    layers = _numbers(args.layers, int, "--layers") if args.layers else None
    if args.relevance_data is not None:
        data.read_documents(args.relevance_data)                        # read now: a typo costs no load
    if args.lama is not None:
        data.read_lama(args.lama, minigpt.Tokenizer.from_pretrained(args.model, revision=args.revision))
    for option, needs in (("sentiment_model", "sentiment_data"), ("sentiment_scorer", "sentiment_data"),
                          ("toxicity_scorer", "toxicity_data")):
        if getattr(args, option) and getattr(args, needs) is None:
            raise ValueError(f"--{option.replace('_', '-')} is for sentiment and toxicity runs: it needs "
                             f"--{needs.replace('_', '-')}")
    preset = claims.PRESETS[args.preset]
    scorers = {}                                                         # built now: a missing key costs no load
    for option, needs in (("sentiment_dev_data", "sentiment_data"), ("toxicity_dev_data", "toxicity_data")):
        if getattr(args, option) and getattr(args, needs) is None:
            raise ValueError(f"--{option.replace('_', '-')} chooses the setting of a run that needs "
                             f"--{needs.replace('_', '-')}")
    if args.sentiment_data is not None:
        data.read_labelled(args.sentiment_data)
        names = (args.sentiment_scorer or preset.sentiment_scorer).split(",")
        scorers["sentiment_scorer"], *scorers["sentiment_also"] = [get_scorer(n.strip(), SENTIMENT) for n in names]
        if args.sentiment_dev_data is not None:
            data.read_labelled(args.sentiment_dev_data)
    if args.toxicity_data is not None:
        data.read_prompts(args.toxicity_data)
        names = (args.toxicity_scorer or preset.toxicity_scorer).split(",")
        scorers["toxicity_scorer"], *scorers["toxicity_also"] = [get_scorer(n.strip(), TOXICITY) for n in names]
        if args.toxicity_dev_data is not None:
            data.read_dev_prompts(args.toxicity_dev_data)
    model, tok = _load(args)
    sentiment_model = (minigpt.load(args.sentiment_model, backend=args.backend, **weights_option(args))
                       if args.sentiment_model else None)        # --revision is --model's, as for --fluency-model
    try:
        report = _run_paper(args, model, tok, sentiment_model, scorers, layers)
    except KeyboardInterrupt as e:        # the experiment cut short says what it saved; say the rest
        kept = f"the experiments finished before it are kept in {args.out}"
        raise KeyboardInterrupt(f"{e} ({kept})" if str(e) else f"{kept}; run the same command to resume") from None
    said = f"wrote {Path(args.out) / 'REPORT.md'} and {Path(args.out) / 'paper.json'} ({report['wall_s']} s)"
    if args.json:
        print(said, file=sys.stderr)
        print(json.dumps(json_safe(report["claims"]), indent=2))
    else:
        print(said)
    return 0


def _run_paper(args, model, tok, sentiment_model, scorers, layers) -> dict:
    return paper.run(model, tok, args.out, model_name=args.model, quick=args.quick,
                       relevance_data=args.relevance_data, lama=args.lama, layers=layers, seed=args.seed,
                       version=args.preset, sentiment_data=args.sentiment_data, toxicity_data=args.toxicity_data,
                       sentiment_model=sentiment_model, sentiment_model_name=args.sentiment_model or "",
                       sentiment_dev_data=args.sentiment_dev_data, toxicity_dev_data=args.toxicity_dev_data,
                       progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler,
                       worker_backend=args.worker_backend,
                       command=command_line(args.argv), rerun=args.rerun,
                       sizes={"topic_samples": args.topic_samples, "max_chunks": args.chunks, "facts": args.facts,
                              "sentiment_prompts": args.prompts, "toxicity_prompts": args.prompts}, **scorers)


def command_line(argv: list[str]) -> str:
    """`actadd ARGS` as a shell would take it back (each argument quoted where it needs to be)."""
    import shlex

    return "actadd " + " ".join(shlex.quote(a) for a in argv)


def _reproduce(parser, args):
    model, tok = _load(args)
    ours = measure.reproduce(model, tok)
    rows = [(kind, ours[f"{kind}_loss"], measure.ORIGINAL_GPT2_XL[kind]) for kind in ("unsteered", "steered")]
    if args.json:
        print(json.dumps({"model": args.model, **ours, "original_gpt2_xl": measure.ORIGINAL_GPT2_XL}, indent=2))
        return 0
    print(f"mean next-token loss of <|endoftext|>I hate you because on {args.model}; steering: 'Love ' - 'Hate', "
          "layer 6, coefficient 2, front")
    print(f"{'':<10} {'ours':>10} {'original (gpt2-xl)':>19} {'difference':>11}")
    for kind, value, original in rows:
        print(f"{kind:<10} {value:>10.6f} {original:>19.6f} {value - original:>11.2e}")
    return 0


def _pairs(parser, args):
    if (args.prompt is None) == (args.corpus is None):
        parser.error("give one metric: --prompt with --topic (next-token effectiveness), or --corpus (log-prob shift)")
    if args.prompt is not None and not args.topic:
        parser.error("--prompt needs --topic: the tokens whose next-token log-probability is the metric")
    contrast = pairs.read_pairs(args.pairs)
    if args.corpus is not None:
        measure.corpus_files(args.corpus)
    writable_folder(args.out, "--out")
    if args.save:
        _check_save(args.save)
    model, tok = _load(args)
    if args.prompt is not None:
        metric = pairs.effectiveness_metric(model, tok, args.prompt, _topic_ids(tok, args.topic))
    else:
        texts = measure.read_corpus(args.corpus, tok, args.split, args.chunk_tokens)
        metric = pairs.logprob_metric(model, texts, Path(args.corpus).name, mask=not args.no_mask, skip_short=args.skip_short)
    report = pairs.pair_report(model, tok, contrast, args.layer, args.coeff, metric, args.reading, args.pad,
                               args.min_cosine, args.controls, args.seed, progress=not args.no_progress)
    document = {"model": args.model, "pairs_file": args.pairs, **report.document()}
    written = write_outputs(args.out, "pairs", document, report.rows(), report.plot)
    if args.save:
        layers = _numbers(args.save_layers, int, "--save-layers") if args.save_layers else [args.layer]
        vector = pairs.mean_of_pairs(model, tok, contrast, args.coeff, layers, args.reading, args.pad,
                                     _positions(args.positions))
        written.append(save(vector, args.save))
    print(json.dumps(json_safe(document), indent=2) if args.json else report.table())
    if not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _calibrate(parser, args):
    if (args.plus is None) == (args.pairs is None):
        parser.error("give --plus (and --minus) or --pairs")
    contrast = pairs.read_pairs(args.pairs) if args.pairs else [(args.plus, args.minus)]
    layers = _numbers(args.layers, int, "--layers") if args.layers else None
    writable_folder(args.out, "--out")
    model, tok = _load(args)
    result = interpret.calibrate(model, tok, args.prompt, contrast, layers, _numbers(args.ratios, float, "--ratios"),
                                 args.reading, args.pad)
    written = write_outputs(args.out, "calibrate", {"model": args.model, **result.document()}, result.rows, result.plot)
    print(json.dumps(json_safe(result.document()), indent=2) if args.json else result.table())
    if not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _lens(parser, args):
    _vector_inputs(parser, args)
    writable_folder(args.out, "--out")
    model, tok = _load(args)
    vector = _vector(parser, args, model, tok)
    report = interpret.lens(model, tok, vector, args.prompt, args.k)
    rows = [{"layer": r["layer"], "position": r["position"], "kind": kind, "rank": i, "token": t, "value": v}
            for r in report.vector for kind in ("top", "bottom") for i, (t, v) in enumerate(r[kind])]
    rows += [{"layer": r["layer"], "position": "last", "kind": kind, "rank": i, "token": t, "value": v}
             for r in report.changes for kind in ("promoted", "suppressed") for i, (t, v) in enumerate(r[kind])]
    document = {"model": args.model, "heuristic": "logit lens", **report.document()}
    written = write_outputs(args.out, "lens", document, rows, report.plot if args.prompt else None)
    print(json.dumps(json_safe(document), indent=2) if args.json else report.table())
    if not args.json:
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _serve(parser, args):
    from .serve import Steerer, serve

    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    model, tok = _load(args)
    options = {k: getattr(args, k) for k in ("revision", "backend", "weights")
               if getattr(args, k) not in (None, "numpy")}
    serve(Steerer(model, tok, args.model, options), args.host, args.port)
    return 0


MEASURES = {"logprobs": _logprobs, "nexttoken": _nexttoken, "sweep": _sweep, "reproduce": _reproduce, "eval": _eval,
            "paper": _paper, "pairs": _pairs, "calibrate": _calibrate, "lens": _lens, "serve": _serve,
            "compare": _compare}


if __name__ == "__main__":
    raise SystemExit(main())
