"""Activation Addition (Turner et al., arXiv 2308.10248), as the authors' code does it
(montemac/activation_additions, on TransformerLens), with each step of the method marked once:

    Step 1  prompts are tokenized with BOS (<|endoftext|>, OPT's </s>) first ... tokens_with_bos
    Step 2  the site is blocks.{L}.hook_resid_pre, the whole [pos, d_model] matrix .. site
    Step 3  an addition contributes coeff * resid_pre_L(prompt); an x-vector is (plus, +c)
            and (minus, -c), the shorter right-padded with " " ................ x_vector
    Step 4  every activation comes from the unsteered model, no hook attached .. steering_vector
    Step 5  the matrix goes at the prompt's first positions (or mid, back), every row .. _placement
    Step 6  only on the prompt's positions: generated tokens are never modified .. _steering_hook
    Step 7  a prompt shorter than the matrix is an error ...................... check_lengths
    Step 8  additions at one layer sum, each over its own span; layers are independent .. _add
    Step 9  sampling as the paper, steered and unsteered from the same seed .... actadd.generate

Everything that applies a vector (its hooks, a batch steered row by row, sweeps, evals, the
measurements, the pair report) goes through one interface, `Steering`: where a vector adds what
(`placements`), and one hook that adds it. ActAdd's matrix (`SteeringVector`, here) and the
mean-difference direction (`actadd.direction.DirectionVector`) implement it.
"""

from __future__ import annotations

import abc
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Sequence

import numpy as np

import minigpt
from minigpt import Tokenizer, Transformer
from minigpt.backend import array_namespace

from .provenance import fingerprint

Alignment = Literal["front", "mid", "back"]
ALIGNMENTS = ("front", "mid", "back")
PADDINGS = ("space", "endoftext", "none")


def site(layer: int) -> str:
    """Step 2: where ActAdd reads and writes: the residual stream entering block `layer`
    (layer 0: embeddings + positions), the TransformerLens hook blocks.{L}.hook_resid_pre."""
    return f"blocks.{layer}.hook_resid_pre"


def residual_site(layer: int, n_layer: int) -> str:
    """The residual stream at `layer`: entering block `layer`, or for layer = n_layer leaving the last one."""
    return site(layer) if layer < n_layer else f"blocks.{n_layer - 1}.hook_resid_post"


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
# Something that steers


class Placement(NamedTuple):
    """Where one array goes in a pass: delta[batch[i], pos[i]] += source[index[i]] (index None:
    source itself, one [d_model] row, at every place). Host arrays; source stays the vector's.
    `project` (directional ablation): source is a unit direction u times a strength a, and what
    is added is -a (x . u) u, x the activation there before any steering at this hook."""

    batch: np.ndarray        # [places] batch rows
    pos: np.ndarray          # [places] places in the pass
    source: np.ndarray       # float32 [n, d_model] (a matrix) or [d_model] (a direction)
    index: np.ndarray | None  # [places] rows of source
    project: float = 0.0     # ablation: the strength a (0: an addition)


class Steering(abc.ABC):
    """Something that steers. Hooks, row_hooks, sweeps, evals, measurements and pair reports use
    only this, whichever vector they are given. Implemented by SteeringVector (ActAdd's
    per-position matrices, below) and actadd.direction.DirectionVector (a direction per layer).

    Besides the methods: `layers` (where it adds), `alignment`, `fingerprint` (the
    model it was made on) and `beyond_prompt` (whether it adds to generated tokens too)."""

    beyond_prompt = False
    ablates = False                 # projects a direction out (the delta depends on the activations)

    @property
    @abc.abstractmethod
    def length(self) -> int:
        """The shortest prompt it can steer (with BOS)."""

    @property
    @abc.abstractmethod
    def d_model(self) -> int:
        """The width of what it adds."""

    @abc.abstractmethod
    def hook_name(self, layer: int) -> str:
        """The hook point of `layer`."""

    def sites(self) -> list[tuple[object, str]]:
        """(key, hook name) of every place it acts, the key handed to `placements`: one per
        layer by default. Directional ablation also acts at each block's hook_resid_mid."""
        return [(layer, self.hook_name(layer)) for layer in self.layers]

    @abc.abstractmethod
    def placement(self, alignment: str | None = None) -> str:
        """Where it goes, in words ("front alignment"); an alignment it cannot take is an error."""

    @abc.abstractmethod
    def placements(self, layer: int, positions: np.ndarray, lengths: np.ndarray | None,
                   rows: np.ndarray | None = None, alignment: str | None = None) -> list[Placement]:
        """What it adds at `layer` to a pass whose places have token positions `positions`
        (host [batch, pos], -1 = padding) and whose rows' prompts have `lengths` tokens (None:
        a decode step, past every prompt); only batch rows `rows` (default all)."""

    @abc.abstractmethod
    def masked_positions(self, length: int, alignment: str | None = None) -> np.ndarray:
        """bool [length]: the positions of a `length`-token text whose next-token predictions a
        measurement leaves out (the original's masking): where the model reads what was added
        rather than the text."""

    @abc.abstractmethod
    def scaled(self, factor: float) -> Steering:
        """The same vector with its coefficient multiplied by `factor`."""

    @abc.abstractmethod
    def random_like(self, layer: int, rng: np.random.Generator) -> Steering:
        """A control: placed as this vector is at `layer`, each row it adds replaced by a random
        direction of that row's norm. Its effect is what any addition of that size does."""

    @abc.abstractmethod
    def rows_at(self, layer: int) -> tuple[np.ndarray, list]:
        """The residual-stream vectors it adds at `layer` ([n, d_model]) and their positions
        (None: wherever it is placed), for reading through the unembedding."""

    @abc.abstractmethod
    def describe(self, alignment: str | None = None) -> str:
        """One line for people."""

    @abc.abstractmethod
    def summary(self) -> dict:
        """What it is, for JSON output."""

    def hooks(self, prompt_lengths: Sequence[int] | int | None = None,
              alignment: str | None = None) -> list[tuple[str, object]]:
        """`fwd_hooks` that steer every row of a pass: one hook per layer (Step 8: layers are
        independent). With `prompt_lengths` (one per batch row, or one for all) the prompt is
        those first real tokens of each row, on every pass: the result is the same whether a
        sequence is recomputed in full each step or decoded from a KV cache. Without it, a pass
        that starts at position 0 is taken as the whole prompt and later passes (cached decode
        steps) are not prompt, as the original code does (it returns early when a pass has one
        position)."""
        return steering_hooks([(None, self)], prompt_lengths, alignment)

    def delta(self, layer: int, length: int, alignment: str | None = None,
              resid: np.ndarray | None = None) -> np.ndarray:
        """float32 [length, d_model]: what the hooks add at `layer` to a `length`-token prompt
        whose activations there are `resid` ([length, d_model]; needed only by an ablation,
        whose delta depends on them)."""
        out = np.zeros((1, length, self.d_model), np.float32)
        _add(out, self.placements(layer, np.arange(length)[None], np.array([length]), None, alignment),
             resid=None if resid is None else np.asarray(resid, np.float32)[None])
        return out[0]


# ---------------------------------------------------------------------------------------------
# ActAdd's steering vector


@dataclass
class SteeringVector(Steering):
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

    @property
    def d_model(self) -> int:
        return self.activations[0].shape[1]

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

    def placement(self, alignment: Alignment | None = None) -> str:
        alignment = alignment or self.alignment
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment={alignment!r}: expected one of {ALIGNMENTS}")
        return f"{alignment} alignment"

    def placements(self, layer, positions, lengths, rows=None, alignment=None) -> list[Placement]:
        if lengths is None:
            return []                                                         # Step 6: past the prompt
        return [_placement(m, positions, lengths, alignment or self.alignment, rows)
                for a, m in zip(self.additions, self.activations) if a.layer == layer]

    def masked_positions(self, length: int, alignment: Alignment | None = None) -> np.ndarray:
        """Where the matrices sit: there the model reads the steering prompt's activations
        added to the text's (the first len(matrix) positions with front alignment)."""
        covered = np.zeros(length, bool)
        for layer in self.layers:
            for place in self.placements(layer, np.arange(length)[None], np.array([length]), None, alignment):
                covered[place.pos] = True
        return covered

    def scaled(self, factor: float) -> SteeringVector:
        """The same additions with coefficients multiplied by `factor` (activations too: exact)."""
        return replace(self, additions=tuple(replace(a, coeff=a.coeff * factor) for a in self.additions),
                       activations=tuple(factor * m for m in self.activations))

    def random_like(self, layer: int, rng: np.random.Generator) -> SteeringVector:
        m = self.matrix(layer).astype(np.float64)
        r = rng.standard_normal(m.shape)
        r *= np.linalg.norm(m, axis=-1, keepdims=True) / np.linalg.norm(r, axis=-1, keepdims=True)
        tokens = self.additions[0].tokens[:len(m)] + (0,) * max(0, len(m) - len(self.additions[0].tokens))
        return SteeringVector((ActivationAddition(tokens, 1.0, layer, "random control"),), (r.astype(np.float32),),
                              self.alignment, self.padding, self.fingerprint)

    def rows_at(self, layer: int) -> tuple[np.ndarray, list]:
        """The summed matrix's rows after BOS (where an x-vector's difference is 0)."""
        m = self.matrix(layer)
        return (m[1:], list(range(1, len(m)))) if len(m) > 1 else (m, [0])

    def describe(self, alignment: Alignment | None = None, most: int = 6) -> str:
        """The additions (at most `most`, then a count) and the alignment."""
        terms = [f"{'+' if a.coeff >= 0 else '-'} {abs(a.coeff):g} x {a.prompt!r} @ layer {a.layer}"
                 for a in self.additions]
        more = f" ... ({len(terms) - most} more)" if len(terms) > most else ""
        return " ".join(terms[:most]) + more + f", {alignment or self.alignment} alignment"

    def summary(self) -> dict:
        return {"additions": [{"prompt": a.prompt, "tokens": list(a.tokens), "coeff": a.coeff, "layer": a.layer}
                              for a in self.additions]}


def _placement(m: np.ndarray, positions: np.ndarray, lengths: np.ndarray, alignment: Alignment,
               rows=None) -> Placement:
    """Step 5: matrix m ([n, d_model]) at each row's prompt positions
    front: 0..n-1;  mid: len//2 - n//2 onward (as the original);  back: len-n..len-1.
    `rows` (host ints): only those batch rows (default all). Worked out on the host."""
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    n, lengths, positions = len(m), lengths[rows], positions[rows]
    start = {"front": np.zeros_like(lengths), "mid": lengths // 2 - n // 2, "back": lengths - n}[alignment]
    row = positions - start[:, None]                                          # index into m
    inside = (positions >= 0) & (positions < lengths[:, None]) & (row >= 0) & (row < n)
    b, p = np.nonzero(inside)                                                 # [places]
    return Placement(rows[b], p, m, row[b, p])


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


# ---------------------------------------------------------------------------------------------
# Applying any steering vector: the hooks


def steering_hooks(parts: Sequence[tuple[np.ndarray | None, Steering]], prompt_lengths=None, alignment=None,
                   batch: int | None = None) -> list[tuple[str, object]]:
    """`fwd_hooks` adding each part's vector to its batch rows (rows None: every row), one hook
    per layer that any of them steers. `batch`: the number of rows the parts were made for (a
    pass with another is an error), or None for any."""
    parts = [(rows, v, v.placement(alignment)) for rows, v in parts]         # an alignment it cannot take: now
    at: dict[str, list] = {}                                                  # hook name -> [(key, part)]
    for part in parts:
        for key, name in part[1].sites():
            at.setdefault(name, []).append((key, part))
    return [(name, _steering_hook(at[name], prompt_lengths, alignment, batch)) for name in sorted(at, key=_hook_order)]


def _hook_order(name: str) -> tuple[int, int]:
    """blocks.{L}.hook_resid_pre < hook_resid_mid < hook_resid_post < blocks.{L+1}..., the
    order a pass meets them."""
    _, block, point = name.split(".", 2)
    return int(block), ("hook_resid_pre", "hook_resid_mid", "hook_resid_post").index(point)


def _steering_hook(entries, prompt_lengths, alignment, batch):
    """Step 6: the hook at one hook point, for the parts (key, (rows, vector, placement)) that
    act there. It works out which passes are prompt (see Steering.hooks) and leaves every
    other pass alone, unless a vector acts beyond the prompt."""
    on_device = _OnDevice()
    parts = [part for _, part in entries]
    beyond_prompt = any(v.beyond_prompt for _, v, _ in parts)

    def steer(resid_pre, hook):                                               # [batch, pos, d_model]
        positions = hook.positions                                            # host [batch, pos]; -1 = padding
        n, k = positions.shape[0], 1
        if batch is not None and n != batch and hook.start > 0 and n % batch == 0:
            k = n // batch                  # a decode step of generate(samples=k): row b's samples are b*k .. b*k+k-1
        if prompt_lengths is not None:
            given = np.asarray(prompt_lengths)
            lengths = np.broadcast_to(np.repeat(given, k) if given.ndim else given, (n,))
        elif hook.start == 0:
            lengths = positions.max(axis=1) + 1                               # the whole pass is the prompt
        elif beyond_prompt:
            lengths = None                                                    # a decode step, steered past the prompt
        else:
            return None                                                       # a decode step: not the prompt
        if batch is not None and n != batch * k:
            raise ValueError(f"row steering was built for {batch} rows, but this pass of {hook.name} has {n}")
        here = entries if k == 1 else [(key, (None if rows is None else (rows[:, None] * k + np.arange(k)).ravel(),
                                              v, placement)) for key, (rows, v, placement) in entries]
        if lengths is not None:
            for _, (rows, v, placement) in here:
                check_lengths(lengths if rows is None else lengths[rows], v.length, placement, rows)
            if not beyond_prompt and not (positions < lengths[:, None]).any():
                return None                                                   # past the prompt: nothing to add
        places = [p for key, (rows, v, _) in here for p in v.placements(key, positions, lengths, rows, alignment)
                  if p.batch.size]
        if not places:
            return None                                                       # nothing placed in this pass
        delta = array_namespace(resid_pre).zeros(resid_pre.shape, dtype=resid_pre.dtype)
        _add(delta, places, on_device, resid_pre)
        return resid_pre + delta
    return steer


def _add(delta, places: Sequence[Placement], on_device=None, resid=None) -> None:
    """Step 8: every placed array added to delta in turn, so additions at one layer sum, each
    over its own span. `delta` may live on a device; `on_device` copies the sources there.
    An ablation's placement adds -a (x . u) u, x read from `resid` (the activation before any
    of this hook's additions, so that the order of parts does not matter)."""
    xp = array_namespace(delta)
    for place in places:
        source = place.source if on_device is None else on_device(xp, place.source)
        b, p = xp.asarray(place.batch), xp.asarray(place.pos)
        if place.project:
            if resid is None:
                raise ValueError("an ablation's delta depends on the activations: give them (resid)")
            x = resid[b, p]                                                   # [places, d_model]
            value = (-place.project * (x @ source))[:, None].astype(x.dtype) * source
        else:
            value = source if place.index is None else source[xp.asarray(place.index)]
        delta[b, p] += value


class _OnDevice:
    """A hook's copies of host arrays on the activations' device, made at its first pass and
    kept (a vector's arrays stay host NumPy: data to save, compare and inspect)."""

    def __init__(self):
        self._copies: dict = {}

    def __call__(self, xp, array: np.ndarray):
        key = (xp, id(array))
        if key not in self._copies:
            self._copies[key] = (array, xp.asarray(array))                   # holding it keeps the id its own
        return self._copies[key][1]


def check_lengths(lengths, n: int, placement: str, rows=None) -> None:
    """Step 7: a prompt shorter than the steering matrix is an error, as in the original.
    `rows`: the batch rows that `lengths` belong to (default 0, 1, ...), for the message."""
    short = np.flatnonzero(np.asarray(lengths) < n)
    if short.size:
        i = int(short[0])
        raise ValueError(
            f"the prompt of batch row {i if rows is None else int(rows[i])} has {int(lengths[i])} tokens (with "
            f"BOS) but the steering matrix has {n} positions ({placement} needs the prompt at least as long): "
            "lengthen the prompt (e.g. pad it with spaces) or shorten the steering prompts"
        )


def row_hooks(vectors: Sequence[Steering | None], prompt_lengths: Sequence[int] | int | None = None,
              alignment: Alignment | None = None) -> list[tuple[str, object]]:
    """`fwd_hooks` that steer each batch row with its own vector: row b by vectors[b] (None
    leaves it unsteered), at that vector's layers, coefficients and placement. A layer x
    coefficient grid of log-probs or generations then runs as batches, not cell by cell; an
    ActAdd matrix and a direction may share a batch.

    Row b gets exactly the delta that vectors[b].hooks() would add to it (the same hook, the
    same arrays, placed and summed in the same order); only the batch's matrix products differ,
    by float32 rounding. Passes as in `Steering.hooks`; a decode step with k times as many rows
    as `vectors` (generate(samples=k), prompt-major) steers row b's k samples with vectors[b]
    (a vector that acts beyond the prompt); any other number of rows is an error."""
    vectors = list(vectors)
    if not vectors:
        raise ValueError("row_hooks needs one vector (or None) per batch row")
    for v in vectors:
        if v is not None and not isinstance(v, Steering):
            raise TypeError(f"row_hooks takes a steering vector (SteeringVector, DirectionVector) or None per row, "
                            f"got {type(v).__name__}")
    groups: dict[int, list[int]] = defaultdict(list)                          # rows sharing one vector
    for b, v in enumerate(vectors):
        if v is not None:
            groups[id(v)].append(b)
    parts = [(np.array(rows), vectors[rows[0]]) for rows in groups.values()]
    return steering_hooks(parts, prompt_lengths, alignment, batch=len(vectors))


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


def generate(model: Transformer, tokenizer: Tokenizer, prompt: str, vector: Steering, n: int = 3, seed: int = 0,
             max_new_tokens: int = 50, alignment: Alignment | None = None, **sampling) -> SideBySide:
    """Step 9: n unsteered and n steered completions of `prompt`, sampled as in the paper
    (temperature 1, top-p 0.3, frequency penalty 1 counting the prompt; `sampling` overrides)
    from the same seed: row i of both draws from default_rng([seed, i])."""
    sampling = {**PAPER_SAMPLING, **sampling}
    ids = tokens_with_bos(tokenizer, prompt)                                  # Step 1, the user's prompt
    check_lengths(np.array([len(ids)]), vector.length, vector.placement(alignment))
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


def norm_report(model: Transformer, tokenizer: Tokenizer, vector: Steering, prompt: str,
                alignment: Alignment | None = None) -> list[NormReport]:
    """For each steered layer: how large the addition is next to the residual stream it is added
    to, position by position (coefficients mean little across layers and models without it)."""
    ids = tokens_with_bos(tokenizer, prompt)
    check_lengths(np.array([len(ids)]), vector.length, vector.placement(alignment))
    _, cache = model.run_with_cache(ids, names=[vector.hook_name(L) for L in vector.layers])
    reports = []
    for L in vector.layers:
        resid = model.backend.to_host(cache[vector.hook_name(L)])[0]          # [pos, d_model]
        delta = vector.delta(L, len(ids), alignment, resid)                    # [pos, d_model]
        reports.append(NormReport(L, tokenizer.token_strs(ids), np.linalg.norm(delta, axis=-1),
                                  np.linalg.norm(resid, axis=-1), vector.hook_name(L)))
    return reports
