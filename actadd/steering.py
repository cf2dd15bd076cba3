"""Activation Addition (Turner et al., arXiv 2308.10248), as the authors' code does it
(montemac/activation_additions, on TransformerLens), with each step of the method marked once:

    Step 1  prompts are tokenized with BOS (<|endoftext|>, OPT's </s>) first ... tokens_with_bos
    Step 2  the site is blocks.{L}.hook_resid_pre, the whole [pos, d_model] matrix .. site
    Step 3  an addition contributes coeff * resid_pre_L(prompt); an x-vector is (plus, +c)
            and (minus, -c), the shorter right-padded with " " ................ x_vector
    Step 4  every activation comes from the unsteered model, no hook attached .. steering_vector
    Step 5  the matrix is added at the prompt's first positions (or mid, back), every row .. _place
    Step 6  only on the prompt's positions: generated tokens are never modified .. SteeringVector.hooks
    Step 7  a prompt shorter than the matrix is an error ..................... _check_lengths
    Step 8  additions at one layer sum, each over its own span; layers are independent .. SteeringVector.hooks
    Step 9  sampling as the paper, steered and unsteered from the same seed .... actadd.generate
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from minigpt import Tokenizer, Transformer
from minigpt.backend import array_namespace

Alignment = Literal["front", "mid", "back"]
ALIGNMENTS = ("front", "mid", "back")
PADDINGS = ("space", "endoftext", "none")


def site(layer: int) -> str:
    """Step 2: where ActAdd reads and writes: the residual stream entering block `layer`
    (layer 0: embeddings + positions), the TransformerLens hook blocks.{L}.hook_resid_pre."""
    return f"blocks.{layer}.hook_resid_pre"


# ---------------------------------------------------------------------------------------------
# Additions


@dataclass(frozen=True)
class ActivationAddition:
    """Adds `coeff` x the resid_pre activations of `tokens` at `layer`. `tokens` start with
    <|endoftext|>; `prompt` is the text they came from (for people and manifests)."""

    tokens: tuple[int, ...]
    coeff: float
    layer: int
    prompt: str = ""

    def __post_init__(self):
        if isinstance(self.coeff, bool) or not isinstance(self.coeff, (int, float, np.floating, np.integer)) \
                or not math.isfinite(self.coeff):
            raise ValueError(f"coeff={self.coeff!r} for {self.prompt!r}: expected a finite number")
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} for {self.prompt!r}: expected an integer >= 0")
        if not self.tokens:
            raise ValueError(f"addition {self.prompt!r} has no tokens (it needs at least <|endoftext|>)")
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        object.__setattr__(self, "coeff", float(self.coeff))
        object.__setattr__(self, "layer", int(self.layer))


def tokens_with_bos(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Step 1: a prompt's tokens after the tokenizer's BOS (<|endoftext|>, OPT's </s>): prepend_bos."""
    return [tokenizer.bos_token_id] + tokenizer.encode(prompt)


def addition(tokenizer: Tokenizer, prompt: str, coeff: float, layer: int) -> ActivationAddition:
    return ActivationAddition(tuple(tokens_with_bos(tokenizer, prompt)), coeff, layer, prompt)


def pad_token_id(tokenizer: Tokenizer, padding: str) -> int | None:
    """The id that right-pads the shorter prompt of an x-vector: " " (the published default:
    "space tokens seem to work best"), <|endoftext|>, or None for no padding."""
    if padding == "space":
        (space,) = tokenizer.encode(" ")  # 220 in GPT-2
        return space
    if padding == "endoftext":
        return tokenizer.eos_token_id
    if padding == "none":
        return None
    raise ValueError(f"padding={padding!r}: expected one of {PADDINGS}")


def x_vector(tokenizer: Tokenizer, plus: str, minus: str, coeff: float, layer: int,
             padding: str = "space") -> tuple[ActivationAddition, ActivationAddition]:
    """Step 3: the paper's x-vector, (plus, +coeff) and (minus, -coeff) at the same positions,
    the shorter prompt right-padded to the longer's length. Love - Hate at layer 6 is
    [BOS, Love, ' '] minus [BOS, H, ate]; position 0 (BOS) cancels."""
    pad = pad_token_id(tokenizer, padding)
    a, b = tokens_with_bos(tokenizer, plus), tokens_with_bos(tokenizer, minus)
    if pad is not None:
        width = max(len(a), len(b))
        a, b = a + [pad] * (width - len(a)), b + [pad] * (width - len(b))
    return (ActivationAddition(tuple(a), coeff, layer, plus), ActivationAddition(tuple(b), -coeff, layer, minus))


# ---------------------------------------------------------------------------------------------
# The steering vector


@dataclass
class SteeringVector:
    """The additions and their activations, coeff * resid_pre_L(tokens), each [pos, d_model]
    float32, computed on the unsteered model. Applied with `hooks()`: at inference each layer's
    additions are placed (front, mid or back of the prompt) and summed into one delta.

    The activations are host NumPy arrays whatever the model's backend (a vector is data, to
    save, compare and inspect); the hooks copy them to the device once, at their first pass."""

    additions: tuple[ActivationAddition, ...]
    activations: tuple[np.ndarray, ...]
    alignment: Alignment = "front"
    padding: str = "space"
    fingerprint: dict = field(default_factory=dict)  # the model's config and weights hash

    def __post_init__(self):
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment={self.alignment!r}: expected one of {ALIGNMENTS}")
        if len(self.additions) != len(self.activations) or not self.additions:
            raise ValueError("a steering vector needs one activation matrix per addition, and at least one")

    @property
    def layers(self) -> list[int]:
        return sorted({a.layer for a in self.additions})

    def hook_name(self, layer: int) -> str:
        return site(layer)

    @property
    def length(self) -> int:
        """The shortest prompt this vector can steer: its longest addition."""
        return max(len(a.tokens) for a in self.additions)

    def matrix(self, layer: int) -> np.ndarray:
        """The summed matrix at `layer`, additions right-padded with zeros to the longest (as the
        original's norm report sums them; with x-vectors the spans coincide)."""
        mats = [m for a, m in zip(self.additions, self.activations) if a.layer == layer]
        if not mats:
            raise ValueError(f"no addition at layer {layer}; this vector has layers {self.layers}")
        out = np.zeros((max(len(m) for m in mats), mats[0].shape[1]), dtype=np.float32)
        for m in mats:
            out[:len(m)] += m
        return out

    def delta(self, layer: int, length: int, alignment: Alignment | None = None) -> np.ndarray:
        """float32 [length, d_model]: what the hooks add at `layer` to a `length`-token prompt."""
        out = np.zeros((1, length, self.activations[0].shape[1]), np.float32)
        for a, m in zip(self.additions, self.activations):
            if a.layer == layer:
                _place(out, m, np.arange(length)[None], np.array([length]), alignment or self.alignment)
        return out[0]

    def hooks(self, prompt_lengths: Sequence[int] | int | None = None,
              alignment: Alignment | None = None) -> list[tuple[str, object]]:
        """`fwd_hooks` that steer: one hook per layer (Step 8: layers are independent), adding
        the sum of that layer's additions, each placed over its own span (Step 5).

        Step 6: only prompt positions are changed. With `prompt_lengths` (one per batch row, or
        one for all) the prompt is those first real tokens of each row, on every pass: the
        result is the same whether a sequence is recomputed in full each step or decoded from a
        KV cache, for every alignment. Without it, a pass that starts at position 0 is taken as
        the whole prompt and later passes (cached decode steps) are left alone, as the original
        code does (it returns early when a pass has one position)."""
        alignment = alignment or self.alignment
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment={alignment!r}: expected one of {ALIGNMENTS}")
        by_layer: dict[int, list[np.ndarray]] = defaultdict(list)
        for a, m in zip(self.additions, self.activations):
            by_layer[a.layer].append(m)
        return [(site(layer), _steering_hook(mats, alignment, prompt_lengths)) for layer, mats in sorted(by_layer.items())]


def _steering_hook(matrices: list[np.ndarray], alignment: Alignment, prompt_lengths):
    on_device: dict = {}                                                      # namespace -> matrices there

    def steer(resid_pre, hook):                                               # [batch, pos, d_model]
        positions = hook.positions                                            # host [batch, pos]; -1 = padding
        if prompt_lengths is not None:
            lengths = np.broadcast_to(np.asarray(prompt_lengths), positions.shape[:1])
        elif hook.start == 0:
            lengths = positions.max(axis=1) + 1                               # the whole pass is the prompt
        else:
            return None                                                       # a decode step: not the prompt
        _check_lengths(lengths, max(len(m) for m in matrices), alignment)
        if not (positions < lengths[:, None]).any():
            return None                                                       # past the prompt: nothing to add
        xp = array_namespace(resid_pre)
        if xp not in on_device:
            on_device[xp] = [xp.asarray(m) for m in matrices]
        delta = xp.zeros(resid_pre.shape, dtype=resid_pre.dtype)
        for m in on_device[xp]:
            _place(delta, m, positions, lengths, alignment)
        return resid_pre + delta
    return steer


def _place(delta, m, positions: np.ndarray, lengths: np.ndarray, alignment: Alignment, rows=None) -> None:
    """Step 5: add matrix m ([n, d_model]) to delta at each row's prompt positions
    front: 0..n-1;  mid: len//2 - n//2 onward (as the original);  back: len-n..len-1.
    `rows` (host ints): only those batch rows (default all). Where is worked out on the host
    (positions, lengths); delta and m may live on a device."""
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    n, lengths, positions = len(m), lengths[rows], positions[rows]
    start = {"front": np.zeros_like(lengths), "mid": lengths // 2 - n // 2, "back": lengths - n}[alignment]
    row = positions - start[:, None]                                          # index into m
    inside = (positions >= 0) & (positions < lengths[:, None]) & (row >= 0) & (row < n)
    b, p = np.nonzero(inside)                                                 # [places]
    xp = array_namespace(delta)
    delta[xp.asarray(rows[b]), xp.asarray(p)] += m[xp.asarray(row[b, p])]


def _check_lengths(lengths, n: int, alignment: str, rows=None) -> None:
    """Step 7: a prompt shorter than the steering matrix is an error, as in the original.
    `rows`: the batch rows that `lengths` belong to (default 0, 1, ...), for the message."""
    short = np.flatnonzero(np.asarray(lengths) < n)
    if short.size:
        i = int(short[0])
        raise ValueError(
            f"the prompt of batch row {i if rows is None else int(rows[i])} has {int(lengths[i])} tokens (with "
            f"BOS) but the steering matrix has {n} positions ({alignment} alignment needs the prompt at "
            "least as long): lengthen the prompt (e.g. pad it with spaces) or shorten the steering prompts"
        )


def steering_vector(model: Transformer, additions: Sequence[ActivationAddition], alignment: Alignment = "front",
                    padding: str = "space") -> SteeringVector:
    """Step 4: every addition's activations, from the unsteered model (no hook attached), one
    forward pass per distinct token sequence, reading all the layers it is needed at."""
    additions = tuple(additions)
    if not additions:
        raise ValueError("no additions given")
    for a in additions:
        if a.layer >= model.config.n_layer:
            raise ValueError(f"layer {a.layer} for {a.prompt!r}: this model has blocks 0 to {model.config.n_layer - 1}")
    by_tokens: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for a in additions:
        by_tokens[a.tokens].add(a.layer)
    resid_pre = residual_streams(model, by_tokens)
    activations = tuple(a.coeff * resid_pre[a.tokens, a.layer] for a in additions)  # Step 3: coeff * resid_pre
    return SteeringVector(additions, activations, alignment, padding, fingerprint(model))


def residual_site(layer: int, n_layer: int) -> str:
    """The residual stream at `layer`: entering block `layer`, or for layer = n_layer leaving the last one."""
    return site(layer) if layer < n_layer else f"blocks.{n_layer - 1}.hook_resid_post"


def residual_streams(model: Transformer, wanted: dict) -> dict[tuple[tuple[int, ...], int], np.ndarray]:
    """{(tokens, layer): host float32 [pos, d_model]}: the unsteered residual stream of each token
    sequence of `wanted` ({tokens: layers}) at its layers, one forward pass per sequence that
    stops at its highest layer (nothing after it is computed)."""
    out = {}
    for tokens, layers in wanted.items():
        *lower, top = sorted(layers)
        stream, cache = model.run_with_cache(list(tokens), names=[site(L) for L in lower], stop_at_layer=top)
        for L in lower:
            out[tuple(tokens), L] = model.backend.to_host(cache[site(L)][0])    # [pos, d_model]
        out[tuple(tokens), top] = model.backend.to_host(stream[0])
    return out


def fingerprint(model: Transformer) -> dict:
    from .vector_io import weights_hash

    return {"model_type": model.model_type, "config": model_config_dict(model), "weights_sha256": weights_hash(model)}


def model_config_dict(model: Transformer) -> dict:
    from dataclasses import asdict

    return asdict(model.config)


# ---------------------------------------------------------------------------------------------
# Using it


PAPER_SAMPLING = {"temperature": 1.0, "top_p": 0.3, "freq_penalty": 1.0}


@dataclass
class SideBySide:
    prompt: str
    prompt_tokens: list[int]           # with BOS first
    unsteered: list[str]
    steered: list[str]
    unsteered_tokens: list[list[int]]
    steered_tokens: list[list[int]]
    seed: int


def generate(model: Transformer, tokenizer: Tokenizer, prompt: str, vector: SteeringVector, n: int = 3, seed: int = 0,
             max_new_tokens: int = 50, alignment: Alignment | None = None, **sampling) -> SideBySide:
    """Step 9: n unsteered and n steered completions of `prompt`, sampled as in the paper
    (temperature 1, top-p 0.3, frequency penalty 1 counting the prompt; `sampling` overrides)
    from the same seed: row i of both draws from default_rng([seed, i])."""
    import minigpt

    sampling = {**PAPER_SAMPLING, **sampling}
    ids = tokens_with_bos(tokenizer, prompt)                                  # Step 1, the user's prompt
    _check_lengths(np.array([len(ids)]), vector.length, alignment or vector.alignment)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive number of completions")
    rows = [ids] * n
    common = dict(max_new_tokens=max_new_tokens, seed=seed, **sampling)
    plain = minigpt.generate(model, rows, tokenizer, **common)
    steered = minigpt.generate(model, rows, tokenizer, fwd_hooks=vector.hooks(len(ids), alignment), **common)
    return SideBySide(prompt, ids, plain.texts, steered.texts, plain.tokens, steered.tokens, seed)


@dataclass
class NormReport:
    """Per prompt position at one layer: the norm of what steering adds there, of the prompt's
    residual stream there, and their ratio (the original's steering_magnitudes_relative_to_prompt)."""

    layer: int
    tokens: list[str]
    steering: np.ndarray            # [pos] |delta|, 0 where nothing is added
    residual: np.ndarray            # [pos] |resid_pre_L(prompt)|
    hook_name: str = ""

    @property
    def ratio(self) -> np.ndarray:
        return self.steering / self.residual

    def format(self) -> str:
        lines = [f"layer {self.layer} ({self.hook_name or site(self.layer)}): norms per prompt position",
                 f"{'pos':>4}  {'token':<16} {'|steering|':>11} {'|resid|':>9} {'ratio':>7}"]
        for p, (tok, s, r) in enumerate(zip(self.tokens, self.steering, self.residual)):
            lines.append(f"{p:>4}  {tok!r:<16} {s:>11.2f} {r:>9.2f} {s / r:>7.3f}")
        return "\n".join(lines)


def norm_report(model: Transformer, tokenizer: Tokenizer, vector: SteeringVector, prompt: str,
                alignment: Alignment | None = None) -> list[NormReport]:
    """For each steered layer: how large the addition is next to the residual stream it is added
    to, position by position (coefficients mean little across layers and models without it)."""
    ids = tokens_with_bos(tokenizer, prompt)
    alignment = alignment or vector.alignment
    _check_lengths(np.array([len(ids)]), vector.length, alignment)
    _, cache = model.run_with_cache(ids, names=[vector.hook_name(L) for L in vector.layers])
    reports = []
    for L in vector.layers:
        resid = model.backend.to_host(cache[vector.hook_name(L)])[0]          # [pos, d_model]
        delta = vector.delta(L, len(ids), alignment)                           # [pos, d_model]
        reports.append(NormReport(L, tokenizer.token_strs(ids), np.linalg.norm(delta, axis=-1),
                                  np.linalg.norm(resid, axis=-1), vector.hook_name(L)))
    return reports


# ---------------------------------------------------------------------------------------------
# A vector per batch row: grids as batches


def row_hooks(vectors: Sequence[SteeringVector | None], prompt_lengths: Sequence[int] | int | None = None,
              alignment: Alignment | None = None) -> list[tuple[str, object]]:
    """`fwd_hooks` that steer each batch row with its own vector: row b by vectors[b] (None
    leaves it unsteered), at that vector's layers, coefficients and alignment. A layer x
    coefficient grid of log-probs or generations then runs as batches, not cell by cell.

    Row b gets exactly the delta that vectors[b].hooks() would add to it (the same matrices,
    placed and summed in the same order); only the batch's matrix products differ, by float32
    rounding. Passes as in `SteeringVector.hooks`; a pass with another number of rows than
    `vectors` (the decode steps of generate(samples=k)) must be past every prompt."""
    vectors = list(vectors)
    if not vectors:
        raise ValueError("row_hooks needs one vector (or None) per batch row")
    for v in vectors:
        if v is not None and not isinstance(v, SteeringVector):
            raise TypeError(f"row_hooks takes SteeringVector or None per row, got {type(v).__name__}")
    groups: dict[int, list[int]] = defaultdict(list)                          # rows sharing one vector
    for b, v in enumerate(vectors):
        if v is not None:
            groups[id(v)].append(b)
    layers = sorted({L for v in vectors if v is not None for L in v.layers})
    hooks = []
    for L in layers:
        parts = []                                                            # (rows, matrices, alignment)
        for rows in groups.values():
            v = vectors[rows[0]]
            mats = [m for a, m in zip(v.additions, v.activations) if a.layer == L]
            if mats:
                parts.append((np.array(rows), mats, alignment or v.alignment))
        hooks.append((site(L), _row_steering_hook(parts, len(vectors), prompt_lengths)))
    return hooks


def _row_steering_hook(parts, batch: int, prompt_lengths):
    on_device: dict = {}                                                      # namespace -> matrices there

    def steer(resid_pre, hook):                                               # [batch, pos, d_model]
        positions = hook.positions                                            # host [batch, pos]; -1 = padding
        if prompt_lengths is None and hook.start != 0:
            return None                                                       # a decode step: not the prompt
        if positions.shape[0] != batch:
            raise ValueError(f"row steering was built for {batch} rows, but this pass of {hook.name} has "
                             f"{positions.shape[0]}")
        if prompt_lengths is not None:
            lengths = np.broadcast_to(np.asarray(prompt_lengths), positions.shape[:1])
        else:
            lengths = positions.max(axis=1) + 1                               # the whole pass is the prompt
        for rows, mats, alignment in parts:
            _check_lengths(lengths[rows], max(len(m) for m in mats), alignment, rows)
        if not (positions < lengths[:, None]).any():
            return None                                                       # past the prompt: nothing to add
        xp = array_namespace(resid_pre)
        if xp not in on_device:
            on_device[xp] = [[xp.asarray(m) for m in mats] for _, mats, _ in parts]
        delta = xp.zeros(resid_pre.shape, dtype=resid_pre.dtype)
        for (rows, _, alignment), mats in zip(parts, on_device[xp]):
            for m in mats:
                _place(delta, m, positions, lengths, alignment, rows)
        return resid_pre + delta
    return steer
