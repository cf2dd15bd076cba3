"""Measuring ActAdd as the paper and the original code do: log-prob shifts on text, next-token
KL, effectiveness and disruption, topic counts in samples, prompting vs injection, and sweeps
over layers x coefficients (x alignments). Every function takes any steering vector (an ActAdd
matrix or a direction: actadd.steering.Steering)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from minigpt import Tokenizer, Transformer
from minigpt.backend import array_namespace
from minigpt.generate import left_pad
from minigpt.textfiles import lines, read_text

from .output import atomic_write, csv_text, matplotlib_ready
from .output import progress as progress_bar
from .steering import (ALIGNMENTS, Steering, check_lengths, generate, row_hooks, site, steering_vector,
                       tokens_with_bos, x_vector)

# ---------------------------------------------------------------------------------------------
# Corpora: (group, token ids with BOS first)

SPLITS = ("sentences", "chunks", "lines", "tsv")


def read_corpus(path: str | Path, tokenizer: Tokenizer, split: str = "sentences",
                chunk_tokens: int = 128) -> list[tuple[str, list[int]]]:
    """Texts of one file, or of every .txt file of a folder (grouped by file), split into
    sentences, fixed chunks of `chunk_tokens` tokens, lines, or `text<TAB>label` lines (grouped
    by label, as the sentiment set is). Each text gets <|endoftext|> prepended."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    out: list[tuple[str, list[int]]] = []
    for file in corpus_files(path):
        raw = read_text(file, ValueError)
        group = file.name
        if split == "chunks":
            ids = tokenizer.encode(raw, disallowed_special=())
            out += [(group, [tokenizer.bos_token_id] + ids[i:i + chunk_tokens]) for i in range(0, len(ids), chunk_tokens)]
            continue
        if split == "sentences":
            pieces = [(group, s) for s in re.split(r"(?<=[.!?])\s+", " ".join(raw.split()))]
        elif split == "lines":
            pieces = [(group, line) for line in lines(raw)]
        else:
            pieces = []
            for number, line in enumerate(lines(raw), 1):
                if line.strip():
                    if "\t" not in line:
                        raise ValueError(f"{file}:{number}: expected 'text<TAB>label'")
                    text, label = line.rsplit("\t", 1)
                    pieces.append((label.strip(), text))
        # Corpus text is ordinary text: a literal "<|endoftext|>" in it is not the special token.
        out += [(g, [tokenizer.bos_token_id] + tokenizer.encode(t, disallowed_special=())) for g, t in pieces if t.strip()]
    if not out:
        raise ValueError(f"{path}: no text to measure (empty corpus)")
    return out


def corpus_files(path: str | Path) -> list[Path]:
    """The files read_corpus reads: `path`, or the .txt files of a folder (not folders named
    so); checked to exist, so that a command can say so before loading a model."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (docs/data.md: what each experiment reads and where to get "
                         "it)")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"{path}: a folder with no .txt files")
        return files
    return [path]


# ---------------------------------------------------------------------------------------------
# Log-probs of the actual next tokens


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_logprobs(model: Transformer, sequences: Sequence[Sequence[int]], vector: Steering | None = None,
                        batch_tokens: int = 1024) -> list[np.ndarray]:
    """For each sequence, log P(token t+1 | tokens 0..t) for every t: float32 [len - 1]. With a
    vector, each sequence is the prompt it steers (added at its own front/mid/back). Sequences
    are batched by length (left-padded, at most `batch_tokens` positions a batch)."""
    out: list[np.ndarray | None] = [None] * len(sequences)
    for rows, tokens, mask in length_batches(sequences, batch_tokens):
        hooks = vector.hooks(prompt_lengths=[len(sequences[i]) for i in rows]) if vector is not None else ()
        logits = model.run_with_hooks(tokens, hooks, attention_mask=mask)              # [batch, pos, vocab]
        _scatter(out, rows, model.backend.to_host(picked_logprobs(logits, tokens)), sequences)
    return out


def length_batches(sequences: Sequence[Sequence[int]], batch_tokens: int = 1024):
    """(indices, tokens, attention mask) of sequences batched by length, left-padded, at most
    `batch_tokens` positions a batch (a longer sequence goes alone)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and len(sequences[order[stop]]) * (stop - start + 1) <= batch_tokens:
            stop += 1
        tokens, mask = left_pad([list(sequences[i]) for i in order[start:stop]])
        yield order[start:stop], tokens, mask
        start = stop


def picked_logprobs(logits, tokens):
    """log P(the next token) at each position but the last: [batch, pos - 1]. The floats of
    log_softmax(logits[:, :-1]) at the next tokens, without writing out the whole vocabulary's
    log-probs (one array of the logits' size fewer, on the sweeps' hottest path). Computed on
    the logits' backend; `tokens` (host ids) are moved there."""
    xp = array_namespace(logits)
    predictions = logits[:, :-1]                                               # [batch, pos - 1, vocab]
    top = predictions.max(axis=-1, keepdims=True)
    shifted = predictions - top
    log_total = xp.log(xp.exp(shifted, out=shifted).sum(axis=-1, keepdims=True))
    picked = xp.take_along_axis(predictions, xp.asarray(tokens[:, 1:, None]), axis=-1)  # [batch, pos - 1, 1]
    return ((picked - top) - log_total)[..., 0]


def _scatter(out: list, rows, picked, sequences) -> None:
    """Each batch row's log-probs, without its left padding, into out[its sequence's index]."""
    for row, i in enumerate(rows):
        out[i] = picked[row, picked.shape[1] + 1 - len(sequences[i]):]


@dataclass
class LogprobShift:
    """Per text: log-probs of its actual next tokens, unsteered and steered, and which
    predictions are masked (made at positions the addition sits on, when `mask` is on)."""

    groups: list[str]
    unsteered: list[np.ndarray]
    steered: list[np.ndarray]
    masked: list[np.ndarray]

    def summary(self) -> dict:
        """Token-weighted mean log-prob difference (steered - unsteered) and perplexity ratio
        exp(-mean difference), over all texts and per group."""
        def summarize(indices):
            diffs = [(self.steered[i] - self.unsteered[i])[~self.masked[i]] for i in indices]
            n = sum(len(d) for d in diffs)
            mean = float(np.concatenate(diffs).astype(np.float64).mean()) if n else float("nan")
            return {"texts": len(indices), "tokens": n, "mean_logprob_diff": mean, "perplexity_ratio": math.exp(-mean)}

        result = {"all": summarize(range(len(self.groups)))}
        for group in dict.fromkeys(self.groups):
            result[group] = summarize([i for i, g in enumerate(self.groups) if g == group])
        return result


def _check_texts(model: Transformer, texts, vector: Steering, skip_short: bool):
    """Texts that fit the context, and are not shorter than the steering matrix (or, with
    `skip_short`, without those that are)."""
    if not texts:
        raise ValueError("no texts to measure")
    long = [i for i, (_, ids) in enumerate(texts) if len(ids) > model.config.n_positions]
    if long:
        group, ids = texts[long[0]]
        raise ValueError(f"text {long[0]} of {group!r} has {len(ids)} tokens, more than n_positions="
                         f"{model.config.n_positions} ({len(long)} such texts); split the corpus into chunks "
                         f"of at most {model.config.n_positions - 1} tokens (split='chunks')")
    short = [i for i, (_, ids) in enumerate(texts) if len(ids) < vector.length]
    if short and not skip_short:
        group, ids = texts[short[0]]
        raise ValueError(f"text {short[0]} of {group!r} has {len(ids)} tokens (with BOS) but the steering "
                         f"matrix has {vector.length} positions ({len(short)} such texts); pass skip_short=True "
                         "(--skip-short) to leave them out, or use longer texts")
    kept = [t for i, t in enumerate(texts) if i not in set(short)]
    if not kept:
        raise ValueError(f"every text is shorter than the steering matrix ({vector.length} positions)")
    return kept


def logprob_shift(model: Transformer, texts: Sequence[tuple[str, Sequence[int]]], vector: Steering, mask: bool = True,
                  skip_short: bool = False, unsteered: list[np.ndarray] | None = None,
                  batch_tokens: int = 1024) -> LogprobShift:
    """Log-probs of each text's tokens unsteered and steered. As the original, the predictions
    made at the positions the addition sits on (the first len(matrix) with front alignment) are
    masked by default: there the model reads the steering prompt's activations, not the text
    (vector.masked_positions; a direction masks none). `unsteered` reuses log-probs already
    computed for the same texts (as sweeps do)."""
    texts = _check_texts(model, list(texts), vector, skip_short)
    seqs = [ids for _, ids in texts]
    base = unsteered if unsteered is not None else next_token_logprobs(model, seqs, batch_tokens=batch_tokens)
    steered = next_token_logprobs(model, seqs, vector, batch_tokens=batch_tokens)
    return LogprobShift([g for g, _ in texts], base, steered, _masked(vector, seqs, mask))


def _masked(vector: Steering, seqs, mask: bool) -> list[np.ndarray]:
    """Per text, bool [len - 1]: its predictions left out (made at the vector's masked positions)."""
    return [vector.masked_positions(len(ids))[:-1] if mask else np.zeros(len(ids) - 1, bool) for ids in seqs]


# ---------------------------------------------------------------------------------------------
# Next-token distributions


@dataclass
class NextToken:
    unsteered: np.ndarray  # float64 [vocab] probabilities after the prompt
    steered: np.ndarray

    @property
    def contributions(self) -> np.ndarray:
        """Per token, q log(q / p): they sum to KL(steered || unsteered)."""
        q, p = self.steered, self.unsteered
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(q > 0, q * (np.log(q) - np.log(p)), 0.0)

    @property
    def kl(self) -> float:
        return float(self.contributions.sum())

    def top(self, k: int = 10) -> list[tuple[int, float, float, float, float]]:
        """(token, contribution, steered prob, unsteered prob, ratio) of the k largest contributions."""
        c = self.contributions
        order = np.argsort(-c, kind="stable")[:k]
        return [(int(t), float(c[t]), float(self.steered[t]), float(self.unsteered[t]),
                 float(self.steered[t] / self.unsteered[t])) for t in order]

    def effectiveness(self, tokens: Iterable[int]) -> float:
        """log P_steered(A) - log P_unsteered(A) for the token set A (the original's logits.py)."""
        a = token_set(tokens, len(self.steered))
        return float(np.log(self.steered[a].sum()) - np.log(self.unsteered[a].sum()))

    def disruption(self, tokens: Iterable[int]) -> float:
        """The original's disruption: the KL within A and within the rest, each between the
        distributions renormalised to that set, weighted by the steered mass of the set."""
        a = token_set(tokens, len(self.steered))
        total = 0.0
        for part in (a, ~a):
            q, p = self.steered[part], self.unsteered[part]
            if q.sum() == 0:
                continue
            qn, pn = q / q.sum(), p / p.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                total += float(q.sum() * np.where(qn > 0, qn * (np.log(qn) - np.log(pn)), 0.0).sum())
        return total


def token_set(tokens, vocab: int) -> np.ndarray:
    """bool [vocab]: the set A of token ids, checked to be ids of this vocabulary."""
    ids = np.asarray(list(tokens), dtype=np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"token set {ids.tolist()[:10]} must be non-empty ids in [0, {vocab})")
    a = np.zeros(vocab, bool)
    a[ids] = True
    return a


def next_token(model: Transformer, tokenizer: Tokenizer, prompt: str, vector: Steering) -> NextToken:
    """The next-token distributions after `prompt` (with BOS), unsteered and steered."""
    ids = tokens_with_bos(tokenizer, prompt)
    return NextToken(next_distribution(model, ids), next_distribution(model, ids, vector))


def next_distribution(model: Transformer, ids: list[int], vector: Steering | None = None) -> np.ndarray:
    """float64 [vocab]: P(next token | ids), steered by `vector` over the whole of `ids` if given."""
    hooks = vector.hooks(prompt_lengths=len(ids)) if vector is not None else ()
    logits = model.backend.to_host(model.run_with_hooks(ids, hooks, last_only=True)[0, -1])  # [vocab]
    return np.exp(log_softmax(logits.astype(np.float64)))


# ---------------------------------------------------------------------------------------------
# Samples, and prompting vs injection


def topic_pattern(words: Sequence[str]) -> re.Pattern:
    """A pattern finding each whole-word occurrence of any of `words`, in any case ("wed" in
    "wedding" or "Swede" is not one)."""
    words = [w.strip() for w in words if w.strip()]
    if not words:
        raise ValueError("no topic words given")
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def topic_counts(model: Transformer, tokenizer: Tokenizer, prompt: str, vector: Steering, words: Sequence[str],
                 seeds: Sequence[int] = range(5), n: int = 10, max_new_tokens: int = 40, **sampling) -> dict:
    """How often words of `words` (whole words, any case) occur in completions sampled as in the
    paper, unsteered and steered, over several seeds (the paper's wedding-word count)."""
    pattern = topic_pattern(words)
    per_seed = []
    for seed in seeds:
        result = generate(model, tokenizer, prompt, vector, n=n, seed=seed, max_new_tokens=max_new_tokens, **sampling)
        per_seed.append({"seed": seed, "unsteered": sum(len(pattern.findall(t)) for t in result.unsteered),
                         "steered": sum(len(pattern.findall(t)) for t in result.steered)})
    completions = n * len(per_seed)
    return {"per_seed": per_seed, "completions": completions,
            "unsteered_per_completion": sum(s["unsteered"] for s in per_seed) / completions,
            "steered_per_completion": sum(s["steered"] for s in per_seed) / completions}


def prompting_vs_injection(model: Transformer, tokenizer: Tokenizer, phrase: str, texts: Sequence[tuple[str, Sequence[int]]],
                           coeff: float, layer: int, padding: str = "space") -> dict:
    """The post's comparison: perplexity ratio of each group's text when `phrase` is put before
    it in the prompt, and when it is added as activations (x-vector phrase - "", padded), against
    the plain text. Both ratios use the same tokens: those predicted after the injection's span."""
    vector = steering_vector(model, x_vector(tokenizer, phrase, "", coeff, layer, padding), padding=padding)
    texts = _check_texts(model, list(texts), vector, skip_short=False)
    phrase_ids = tokenizer.encode(phrase)
    seqs = [list(ids) for _, ids in texts]
    plain = next_token_logprobs(model, seqs)
    prompted = next_token_logprobs(model, [[s[0]] + phrase_ids + s[1:] for s in seqs])
    injected = next_token_logprobs(model, seqs, vector)
    out = {}
    for group in dict.fromkeys(g for g, _ in texts):
        rows = [i for i, (g, _) in enumerate(texts) if g == group]
        keep = [~vector.masked_positions(len(seqs[i]))[:-1] for i in rows]
        base = np.concatenate([plain[i][k] for i, k in zip(rows, keep)]).astype(np.float64)
        # In the prompted sequence the text's predictions come after the phrase.
        pro = np.concatenate([prompted[i][len(phrase_ids):][k] for i, k in zip(rows, keep)]).astype(np.float64)
        inj = np.concatenate([injected[i][k] for i, k in zip(rows, keep)]).astype(np.float64)
        out[group] = {"tokens": int(base.size), "prompting_perplexity_ratio": math.exp(-(pro - base).mean()),
                      "injection_perplexity_ratio": math.exp(-(inj - base).mean())}
    return out


# ---------------------------------------------------------------------------------------------
# Sweeps


def scaled(vector: Steering, coeff: float) -> Steering:
    """The same vector with its coefficient multiplied by `coeff` (vector.scaled; an ActAdd
    matrix exactly: its activations are multiplied too)."""
    return vector.scaled(coeff)


def sweep(model: Transformer, tokenizer: Tokenizer, plus: str | None, minus: str | None, layers: Sequence[int],
          coeffs: Sequence[float], alignments: Sequence[str] = ("front",), padding: str = "space", texts=None,
          prompt: str | None = None, topic_tokens: Sequence[int] = (), mask: bool = True, skip_short: bool = False,
          progress: bool = True, batch_tokens: int = 1024,
          unit_vector: Callable[[int], Steering] | None = None) -> list[dict]:
    """One row per (layer, coeff, alignment) cell: the log-prob shift on `texts`, and/or the
    next-token KL (and effectiveness/disruption over `topic_tokens`) after `prompt`. The
    unsteered pass is computed once for all cells; each layer's vector once (at coefficient 1,
    then scaled); every cell is what the single-run functions would give.

    The vector is the x-vector plus - minus, or `unit_vector(layer)`: any steering vector at
    coefficient 1 that steers that layer only (e.g. a mean of contrast pairs, either reading;
    plus and minus are then None). Texts shorter than the longest layer's vector are errors (or
    with `skip_short`, left out of every cell). Texts of several groups (a corpus folder's files)
    add each group's tokens, mean difference and perplexity ratio to a row, as "GROUP key"."""
    for L in layers:
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or not 0 <= L < model.config.n_layer:
            raise ValueError(f"layer {L!r} in the grid: this model has blocks 0 to {model.config.n_layer - 1}")
    if texts is None and prompt is None:
        raise ValueError("give texts (log-prob shift) and/or a prompt (next-token KL) to sweep over")
    if not layers or not coeffs or not alignments:
        raise ValueError("the grid is empty: give at least one layer, one coefficient and one alignment")
    for c in coeffs:
        if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or not math.isfinite(c):
            raise ValueError(f"coefficient {c!r} in the grid: expected a finite number")
    for a in alignments:
        if a not in ALIGNMENTS:
            raise ValueError(f"alignment {a!r} in the grid: expected one of {ALIGNMENTS}")
    given = [plus is not None, minus is not None]
    if given != [unit_vector is None] * 2:
        raise ValueError("give the steering prompts plus and minus, or unit_vector (a vector per layer), not both")
    cells = [(L, c, a) for L in layers for c in coeffs for a in alignments]
    unit = {L: unit_vector(L) if unit_vector is not None else
            steering_vector(model, x_vector(tokenizer, plus, minus, 1.0, L, padding), padding=padding) for L in layers}
    for L, v in unit.items():
        if not isinstance(v, Steering) or not (list(v.layers) == [L] or v.ablates):
            raise ValueError(f"unit_vector({L}) gave {getattr(v, 'layers', type(v).__name__)}; expected a steering "
                             f"vector of layer {L} only (or an ablation whose direction is read there)")
        for a in alignments:
            v.placement(a)                                                    # a direction takes front only
    vectors = [replace(unit[L].scaled(c), alignment=a) for L, c, a in cells]
    rows = [{"layer": L, "coeff": c, "alignment": a} for L, c, a in cells]
    start = [min(v.layers) for v in vectors]                                  # where each cell's steering begins
    longest = max(unit.values(), key=lambda v: v.length)                      # every cell on the same texts
    if prompt is not None:  # checked before the long passes over the texts
        ids = tokens_with_bos(tokenizer, prompt)
        check_lengths(np.array([len(ids)]), longest.length, longest.placement())
    if texts is not None:
        texts = _check_texts(model, list(texts), longest, skip_short)
        seqs = [ids for _, ids in texts]
        base = [None] * len(seqs)
        steered = [[None] * len(seqs) for _ in cells]
        # Batch by batch: one unsteered pass keeps resid_pre at every swept layer; then the
        # cells, in order of layer, go through as few passes as the token budget allows, the
        # batch's texts repeated once per cell and each copy steered by its cell's vector
        # (row_hooks). A pass starts at its lowest layer: the blocks before are unsteered.
        by_layer = sorted(range(len(cells)), key=lambda i: start[i])
        batches = list(length_batches(seqs, batch_tokens))
        bar = progress_bar(len(batches), progress, "sweep", "batch")
        for batch, tokens, padding_mask in batches:
            logits, resid = model.run_with_cache(tokens, names=[site(L) for L in sorted(set(start))],
                                                 attention_mask=padding_mask)
            _scatter(base, batch, model.backend.to_host(picked_logprobs(logits, tokens)), seqs)
            lengths = [len(seqs[i]) for i in batch]
            per_pass = max(1, batch_tokens // tokens.size)
            for chunk in (by_layer[i:i + per_pass] for i in range(0, len(cells), per_pass)):
                first = start[chunk[0]]
                k = len(chunk)
                hooks = row_hooks([vectors[i] for i in chunk for _ in batch], prompt_lengths=lengths * k)
                copies = model.backend.to_device(np.tile(np.arange(len(batch)), k))   # [k * batch] rows
                logits = model.run_with_hooks(np.tile(tokens, (k, 1)), hooks, attention_mask=np.tile(padding_mask, (k, 1)),
                                              start_at_layer=first, resid_pre=resid[site(first)][copies])
                picked = model.backend.to_host(picked_logprobs(logits, np.tile(tokens, (k, 1))))
                for j, i in enumerate(chunk):
                    _scatter(steered[i], batch, picked[j * len(batch):(j + 1) * len(batch)], seqs)
            bar.update(1)
        bar.close()
        groups = [g for g, _ in texts]
        for row, vector, out in zip(rows, vectors, steered):
            summary = LogprobShift(groups, base, out, _masked(vector, seqs, mask)).summary()
            row.update(summary.pop("all"))
            if len(summary) > 1:                      # each file of a corpus folder, as `logprobs` shows them
                for group, figures in summary.items():
                    row.update({f"{group} {k}": figures[k] for k in ("tokens", "mean_logprob_diff", "perplexity_ratio")})
    if prompt is not None:
        plain_next = next_distribution(model, ids)
        per_pass = max(1, batch_tokens // len(ids))
        for start in range(0, len(cells), per_pass):                          # every cell a row of one pass
            chunk = vectors[start:start + per_pass]
            logits = model.run_with_hooks([ids] * len(chunk), row_hooks(chunk, prompt_lengths=len(ids)), last_only=True)
            for row, logit in zip(rows[start:start + per_pass], model.backend.to_host(logits[:, -1])):
                nt = NextToken(plain_next, np.exp(log_softmax(logit.astype(np.float64))))
                row["kl"] = nt.kl
                if topic_tokens:
                    row.update(effectiveness=nt.effectiveness(topic_tokens), disruption=nt.disruption(topic_tokens))
    return rows


def write_sweep(rows: list[dict], prefix: str | Path, plot: bool = True) -> list[Path]:
    """PREFIX.csv and PREFIX.json (and PREFIX.png with matplotlib, a layer x coefficient map per
    alignment), each written to a temporary file and renamed: never a half-written file."""
    prefix = Path(prefix)
    text = csv_text(rows)
    written = [atomic_write(prefix.with_suffix(".csv"), lambda p: Path(p).write_text(text)),
               atomic_write(prefix.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(rows, indent=2)))]
    if plot and matplotlib_ready():
        written.append(atomic_write(prefix.with_suffix(".png"), lambda p: _plot(rows, p)))
    return written


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    metric = "perplexity_ratio" if "perplexity_ratio" in rows[0] else "kl"
    alignments = list(dict.fromkeys(r["alignment"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    coeffs = sorted({r["coeff"] for r in rows})
    fig, axes = plt.subplots(1, len(alignments), figsize=(1.2 + 1.1 * len(coeffs) * len(alignments), 1 + 0.4 * len(layers)),
                             squeeze=False)
    for ax, alignment in zip(axes[0], alignments):
        grid = np.full((len(layers), len(coeffs)), np.nan)
        for r in rows:
            if r["alignment"] == alignment:
                grid[layers.index(r["layer"]), coeffs.index(r["coeff"])] = r[metric]
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(coeffs)), [f"{c:g}" for c in coeffs])
        ax.set_yticks(range(len(layers)), layers)
        ax.set(xlabel="coefficient", ylabel="layer", title=f"{metric} ({alignment})")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Reproduction


ORIGINAL_GPT2_XL = {"unsteered": 4.819790363311768, "steered": 7.975721836090088}


def reproduce(model: Transformer, tokenizer: Tokenizer, layer: int = 6, coeff: float = 2.0) -> dict:
    """Mean next-token loss of <|endoftext|>I hate you because, unsteered and with the x-vector
    "Love " - "Hate" (both 3 tokens with BOS: no padding) at `layer`, `coeff`, front. On gpt2-xl
    the original library gave ORIGINAL_GPT2_XL (layer 6, coefficient 2)."""
    ids = tokens_with_bos(tokenizer, "I hate you because")
    vector = steering_vector(model, x_vector(tokenizer, "Love ", "Hate", coeff, layer, padding="none"), padding="none")
    plain, steered = (next_token_logprobs(model, [ids], v)[0] for v in (None, vector))
    return {"tokens": ids, "additions": [list(a.tokens) for a in vector.additions],
            "unsteered_loss": float(-plain.astype(np.float64).mean()), "steered_loss": float(-steered.astype(np.float64).mean())}
