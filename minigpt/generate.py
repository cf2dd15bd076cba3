"""Generation: a KV-cached sampling loop over a batch of left-padded prompts.

    prompts --left pad--> [batch, pos] + mask --prefill--> logits of the last position
    repeat: sample one token per row --one decode step (one position per row)--> logits

Sampling follows TransformerLens's `sample_logits`, the order the original ActAdd code used:

    temperature 0          -> argmax of the raw logits (nothing else applies)
    logits / temperature
    logits -= freq_penalty * count(token so far, prompt included)
    logits -= presence_penalty * (count > 0)
    top-k (keep logits >= the k-th largest), or else top-p (keep sorted tokens while the
        probability before them is at most p: the smallest prefix reaching p, at least one;
        p = 1 keeps every token, as transformers adds no top-p filter at 1.0, rather than
        dropping a tail whose mass before it rounds above 1)
    draw from softmax(logits)

Randomness: row i draws from `numpy.random.default_rng([seed, i])` (or from its own entry of
`row_seeds`), one uniform number per generated token (all drawn before the first step and sent
to the model's device once). Row i's draws therefore depend on the seed and i only, never on the
other rows or the batch size: a prompt at row 0 samples the same way alone or in a batch, and
two calls with the same seed and batch layout (steered and unsteered, as in the paper) share
their draws. The tokens agree too as long as the logits do; batched matmuls can differ from
unbatched ones by float32 rounding, which can flip a draw that falls within ~1e-6 of a boundary.

Several samples of one prompt (`samples=N`) share its prompt pass: it runs once per prompt and
its keys and values are copied to the N rows, rather than computed N times.

Everything per step happens on the model's backend (NumPy, or CuPy on a GPU): the filtering
and the draw read the logits where they are, and only the sampled ids cross to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backend import array_namespace
from .model import HookFn, Transformer
from .tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0          # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None        # in (0, 1]
    freq_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self):
        t = self.temperature
        if not _is_real(t) or not t >= 0 or math.isinf(t):
            raise ValueError(f"temperature={t!r}: expected a finite number >= 0 (0 means greedy)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r}: expected a positive integer")
        if self.top_p is not None and (not _is_real(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1]")
        if self.top_k is not None and self.top_p is not None:
            raise ValueError("give top_k or top_p, not both (TransformerLens would silently ignore top_p)")
        for name in ("freq_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r}: expected a finite number")

    def filter(self, logits, counts):
        """The logits a draw is made from, float64 [batch, vocab]; removed tokens are -inf.
        `counts[b, t]` is how often token t occurs in row b so far (prompt included). Both are
        arrays of one backend (the model's), and the work is done there."""
        xp = array_namespace(logits)
        if self.temperature == 0:  # greedy: the argmax of the raw logits is all that is kept
            logits = logits.astype(xp.float64)
            keep = xp.arange(logits.shape[-1]) == logits.argmax(axis=-1)[:, None]
            return xp.where(keep, logits, -math.inf)
        logits = self._penalized(logits, counts)
        if self.top_k is not None:
            k = min(self.top_k, logits.shape[-1])
            kth = -xp.partition(-logits, k - 1, axis=-1)[:, k - 1:k]           # [batch, 1]
            logits = xp.where(logits < kth, -math.inf, logits)
        elif self.top_p is not None and self.top_p < 1:
            if self._candidates(logits):
                return top_p_from_candidates(logits, self.top_p)
            return top_p_sorted(logits, self.top_p)
        return logits

    def _penalized(self, logits, counts, seen=None, out=None):
        """float64 logits / temperature, minus the penalties, in place on one copy (into `out`, a
        reused float64 buffer of the logits' shape, where given). `seen`: (rows, tokens) index
        arrays reaching every entry whose count is > 0, repeats allowed; the penalties are then
        applied there alone, the same floats, as x - penalty * 0 is x everywhere else."""
        xp = array_namespace(logits)
        if out is None:
            logits = logits.astype(xp.float64)
        else:
            out[...] = logits                                                   # float32 -> float64, exact
            logits = out
        if self.temperature != 1:                                               # x / 1 is x
            logits /= self.temperature
        if not (self.freq_penalty or self.presence_penalty):
            return logits
        if seen is None:
            if self.freq_penalty:
                logits -= self.freq_penalty * counts
            if self.presence_penalty:
                logits -= self.presence_penalty * (counts > 0)
            return logits
        rows, tokens = seen                                                     # a repeat writes the same float
        count, value = counts[rows, tokens], logits[rows, tokens]
        if self.freq_penalty:
            value -= self.freq_penalty * count
        if self.presence_penalty:
            value -= self.presence_penalty * (count > 0)
        logits[rows, tokens] = value
        return logits

    def _candidates(self, logits) -> bool:
        """Whether top-p is decided from each row's largest logits (NumPy, a large vocabulary)."""
        return array_namespace(logits) is np and logits.shape[-1] >= 4 * TOP_P_CANDIDATES

    def sample(self, logits, counts, uniforms, seen=None, workspace=None):
        """One token id per row, [batch] int64, on the logits' backend. Row b takes the first
        token whose cumulative probability exceeds uniforms[b] (in [0, 1), same backend).
        `seen` and `workspace` (NumPy only) make a step cheaper, never different: the (rows,
        tokens) whose counts are > 0 (see _penalized), and a float64 buffer of the logits' shape
        to work in, reused from step to step rather than fresh pages of that size each time."""
        xp = array_namespace(logits)
        if self.temperature == 0:
            return logits.argmax(axis=-1).astype(xp.int64)
        if xp is not np:
            seen = workspace = None
        whole = self.top_k is None and (self.top_p is None or self.top_p == 1)
        if whole and workspace is not None:
            return _draw_in_place(self._penalized(logits, counts, seen, workspace), uniforms)
        if self.top_k is None and not whole and self._candidates(logits):
            # Rows are independent: those decided by their largest logits draw among them, the
            # rest from the whole sorted vocabulary, each as _draw would.
            penalized = self._penalized(logits, counts, seen, workspace)
            index, values, decided = _candidate_rows(penalized, self.top_p, TOP_P_CANDIDATES)
            if decided.all():
                return _draw_among(index, values, uniforms)
            out = np.empty(len(decided), dtype=np.int64)
            out[decided] = _draw_among(index[decided], values[decided], uniforms[decided])
            out[~decided] = _draw(top_p_sorted(penalized[~decided], self.top_p), uniforms[~decided])
            return out
        return _draw(self.filter(logits, counts), uniforms)


def _draw(filtered, uniforms):
    """Row b's first token whose cumulative probability exceeds uniforms[b], from float64
    logits where removed tokens are -inf."""
    xp = array_namespace(filtered)
    probs = xp.exp(filtered - filtered.max(axis=-1, keepdims=True))
    cdf = xp.cumsum(probs, axis=-1)                                             # [batch, vocab]
    # searchsorted(cdf[b], u * total, side="right") for all rows at once: the count of
    # entries <= the target, as cdf does not decrease. A removed token has zero width and
    # is never the answer (u < 1, so u * total < total in floating point too).
    return (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(axis=-1).astype(xp.int64)


def _draw_in_place(logits, uniforms):
    """_draw's token, bit for bit, for float64 NumPy logits that it overwrites: the same
    subtraction, exp and cumulative sum with no temporary of the vocabulary's size, and each
    row's count of sums <= its target found by binary search (the sums never decrease)."""
    logits -= logits.max(axis=-1, keepdims=True)
    cdf = np.cumsum(np.exp(logits, out=logits), axis=-1, out=logits)          # [batch, vocab]
    targets = uniforms * cdf[:, -1]
    return np.array([np.searchsorted(row, t, side="right") for row, t in zip(cdf, targets)], dtype=np.int64)


def _draw_among(index, values, uniforms):
    """_draw's token, bit for bit, from the kept tokens alone: `index` [batch, k] the candidates
    in vocabulary order, `values` their logits (-inf where removed). The removed tokens that
    _draw also sums are zeros, which change no partial sum, so the cumulative sums at the kept
    tokens, the total and so the token chosen are the same."""
    probs = np.exp(values - values.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probs, axis=-1)                                              # [batch, k]
    first = (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(axis=-1)               # the first entry above the target
    return index[np.arange(len(index)), first].astype(np.int64)


def top_p_sorted(logits, top_p: float):
    """Top-p on float64 logits [batch, vocab]: sort every token (stable: ties by index) and keep
    them while the probability before them is at most top_p; the rest become -inf. The
    reference, and the path on a device, where sorting is cheap."""
    xp = array_namespace(logits)
    order = xp.argsort(-logits, axis=-1, kind="stable")                         # [batch, vocab]
    ranked = xp.take_along_axis(logits, order, axis=-1)
    cumulative = xp.cumsum(xp.exp(ranked - ranked[:, :1]), axis=-1) / _total(logits, ranked[:, :1])
    remove = xp.zeros(cumulative.shape, dtype=bool)
    remove[:, 1:] = cumulative[:, :-1] > top_p                                  # mass before token i
    filtered = xp.empty(logits.shape, dtype=logits.dtype)                       # back to vocabulary order
    filtered[xp.arange(order.shape[0])[:, None], order] = xp.where(remove, -math.inf, ranked)
    return filtered


def _total(logits, top):
    """sum exp(logits - top) per row, in vocabulary order: both top-p paths divide by this
    very float, so that they keep the same tokens."""
    return array_namespace(logits).exp(logits - top).sum(axis=-1, keepdims=True)


TOP_P_CANDIDATES = 256


def top_p_from_candidates(logits: np.ndarray, top_p: float, k: int = TOP_P_CANDIDATES) -> np.ndarray:
    """top_p_sorted's result, bit for bit, from each row's k largest logits (NumPy only): a
    partition instead of sorting the whole vocabulary, 9x cheaper on GPT-2's 50,257 tokens.
    The k candidates sorted by logit, ties by index, are the sorted order's first k with the
    same exp, cumsum and total, so they decide the kept set wherever the mass before the k-th
    exceeds top_p and no other token ties with the k-th; any other row is sorted whole."""
    index, values, decided = _candidate_rows(logits, top_p, k)
    filtered = np.full(logits.shape, -math.inf)
    filtered[np.arange(len(index))[:, None], index] = values
    if not decided.all():
        filtered[~decided] = top_p_sorted(logits[~decided], top_p)
    return filtered


def _candidate_rows(logits: np.ndarray, top_p: float, k: int):
    """Each row's k largest logits in vocabulary order (index, values with the removed -inf),
    and whether they decide the row's top-p set."""
    part = np.argpartition(-logits, k - 1, axis=-1)[:, :k]                     # the k largest, any order
    part.sort(axis=-1)                                                          # by index: ties stay in index order
    values = np.take_along_axis(logits, part, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=-1)
    cumulative = np.cumsum(np.exp(ranked - ranked[:, :1]), axis=-1) / _total(logits, ranked[:, :1])
    remove = np.zeros(cumulative.shape, dtype=bool)
    remove[:, 1:] = cumulative[:, :-1] > top_p
    decided = remove[:, -1] & ((logits >= ranked[:, -1:]).sum(axis=-1) == k)
    rows = np.arange(len(part))[:, None]
    removed = np.empty_like(remove)
    removed[rows, order] = remove                                              # back to vocabulary order
    return part, np.where(removed, -math.inf, values), decided


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and not math.isnan(x)


# ---------------------------------------------------------------------------------------------
# Prompts


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask), both [batch, longest]: each prompt right-aligned, padding on the left."""
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        mask[i, width - len(p):] = True
    return tokens, mask


def _prompt_ids(model: Transformer, prompts, tokenizer: Tokenizer | None, prepend_bos: bool) -> list[list[int]]:
    """A batch of prompts as lists of ids: from a str, a list of str, a list of ids, or a list
    of lists of ids; every id checked against the vocabulary."""
    if isinstance(prompts, np.ndarray):
        prompts = [prompts] if prompts.ndim == 1 else list(prompts)
    elif isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and
                                      all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompts)):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("no prompts given")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError(f"prompt {i} is text; pass a tokenizer (minigpt.load gives both), or token ids")
            ids = tokenizer.encode(prompt)
        else:
            ids = np.asarray(prompt)
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise TypeError(f"prompt {i} must be text or a list of integer token ids, got {ids.dtype} {ids.shape}")
            ids = [int(t) for t in ids]
        if prepend_bos:
            if tokenizer is None:
                raise ValueError("prepend_bos needs a tokenizer (for the id of its BOS token)")
            ids = [tokenizer.bos_token_id] + ids
        if not ids:
            raise ValueError(f"prompt {i} is empty; a model needs at least one token (prepend_bos=True gives "
                             "the BOS token)")
        bad = next((t for t in ids if not 0 <= t < model.config.vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt {i}: token id {bad} at position {ids.index(bad)} is outside the "
                             f"vocabulary [0, {model.config.vocab_size})")
        out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------
# The loop


def stream(model: Transformer, prompts, *, max_new_tokens: int = 20, sampling: Sampling = Sampling(),
           seed: int = 0, eos_token_id: int | None = None, fwd_hooks: Iterable[tuple[str, HookFn]] = (),
           samples: int = 1, row_seeds: Sequence | None = None) -> Iterator[list[int | None]]:
    """A generator of each step's new token per row (None for rows that already stopped), for
    a batch of prompt ids. Rows stop after `eos_token_id` (if given) or `max_new_tokens`.
    `fwd_hooks` run on every pass: the prompt's (prefill), then each step's; a hook tells them
    apart by `hook.positions` / `hook.start` (see HookPoint). Every argument is checked here,
    before any work, not at the first step.

    samples    rows per prompt, prompt-major (prompt 0's samples first). The prompt pass runs
               once per prompt, with one row each, and its keys and values are copied to that
               prompt's rows: hooks see len(prompts) rows on the prompt pass, and
               len(prompts) * samples on each step.
    row_seeds  one seed per row (an int or a sequence of ints, as numpy's default_rng takes):
               row r draws from default_rng(row_seeds[r]) instead of default_rng([seed, r])."""
    prompts = _prompt_ids(model, prompts, None, prepend_bos=False)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples={samples!r}: expected a positive number of rows per prompt")
    rows = len(prompts) * int(samples)
    if row_seeds is None:
        row_seeds = [[seed, r] for r in range(rows)]
    elif len(row_seeds) != rows:
        raise ValueError(f"{len(row_seeds)} row_seeds for {rows} rows ({len(prompts)} prompts x {samples} samples)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.n_positions:
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} is longer "
                         f"than n_positions={model.config.n_positions}")
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a Sampling, got {type(sampling).__name__}")
    return _steps(model, prompts, int(samples), max_new_tokens, sampling, row_seeds, eos_token_id,
                  model.hook_points(fwd_hooks))


def _steps(model, prompts, samples, max_new_tokens, sampling, row_seeds, eos_token_id, hooks):
    if max_new_tokens == 0:
        return
    xp, backend = model.xp, model.backend
    batch, vocab = len(prompts) * samples, model.config.vocab_size
    tokens, mask = left_pad(prompts)
    counts = np.zeros((batch, vocab), dtype=np.int64)          # every real token so far, per row
    for i in range(batch):
        np.add.at(counts[i], prompts[i // samples], 1)
    counts = backend.to_device(counts)                         # then updated on the device
    # Every uniform of row i now, in one array: the same numbers as one draw per step.
    uniforms = backend.to_device(np.stack([np.random.default_rng(s).random(max_new_tokens)
                                           for s in row_seeds]))  # [batch, step]
    rows = xp.arange(batch)
    # On the host, the ids each row has seen (its prompt, then each new one): where its counts
    # are > 0, so that the penalties touch those alone. Left padding stands as the row's last
    # prompt id, which is real and so already among them.
    seen_ids = np.repeat(np.where(mask, tokens, tokens[:, -1:]), samples, axis=0)
    seen_ids = np.concatenate([seen_ids, np.zeros((batch, max_new_tokens), np.int64)], axis=1)
    width, seen_rows = tokens.shape[1], np.arange(batch)[:, None]
    workspace = np.empty((batch, vocab)) if xp is np else None                # float64, every step's
    cache = model.new_cache(len(prompts), tokens.shape[1] + max_new_tokens)
    logits = model.forward(tokens, hooks, attention_mask=mask, cache=cache, last_only=True)[:, -1]
    if samples > 1:  # the prompt pass once per prompt, its keys and values copied to its rows
        prompt_of_row = backend.to_device(np.repeat(np.arange(len(prompts)), samples))  # [batch]
        cache.take_rows(prompt_of_row, np.repeat(cache.seen, samples))
        logits = logits[prompt_of_row]
    stopped = np.zeros(batch, dtype=bool)
    for step in range(max_new_tokens):
        seen = (seen_rows, seen_ids[:, :width + step])
        new = sampling.sample(logits, counts, uniforms[:, step], seen, workspace)  # [batch], on the device
        ids = backend.to_host(new)                             # the step's one transfer to the host
        yield [None if s else int(t) for s, t in zip(stopped, ids)]
        counts[rows, new] += 1
        seen_ids[:, width + step] = ids
        if eos_token_id is not None:
            stopped |= ids == eos_token_id
        if stopped.all() or step + 1 == max_new_tokens:
            return
        logits = model.forward(ids[:, None], hooks, cache=cache, last_only=True)[:, -1]


@dataclass
class Generation:
    prompts: list[list[int]]        # each row's prompt ids (with <|endoftext|> if prepended)
    tokens: list[list[int]]         # each row's new ids, ending with <|endoftext|> if it stopped there
    texts: list[str] | None = None  # the new tokens decoded, with a tokenizer


def generate(model: Transformer, prompts, tokenizer: Tokenizer | None = None, *, max_new_tokens: int = 20,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             freq_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int = 0,
             prepend_bos: bool = False, stop_at_eos: bool = True, eos_token_id: int | None = None,
             fwd_hooks: Iterable[tuple[str, HookFn]] = (), samples: int = 1,
             row_seeds: Sequence | None = None) -> Generation:
    """Sample continuations of one prompt or a batch (text needs `tokenizer`; ids work alone).

    Prompts of different lengths are left-padded; each row generates what it would alone.
    A row stops after <|endoftext|> (the tokenizer's, or `eos_token_id`) unless `stop_at_eos` is
    False, or after `max_new_tokens`. The defaults are plain sampling; the paper's are
    temperature=1, top_p=0.3, freq_penalty=1, prepend_bos=True. `samples` and `row_seeds` as in
    `stream`: with samples=N, every prompt gets N rows (prompt-major), sharing one prompt pass.
    """
    sampling = Sampling(temperature, top_k, top_p, freq_penalty, presence_penalty)
    ids = _prompt_ids(model, prompts, tokenizer, prepend_bos)
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = tokenizer.eos_token_id
    eos = eos_token_id if stop_at_eos else None
    steps = stream(model, ids, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, eos_token_id=eos,
                   fwd_hooks=fwd_hooks, samples=samples, row_seeds=row_seeds)
    ids = [p for p in ids for _ in range(samples)]             # one prompt per row
    new: list[list[int]] = [[] for _ in ids]
    for step in steps:
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
    texts = [tokenizer.decode(t) for t in new] if tokenizer is not None else None
    return Generation(ids, new, texts)
