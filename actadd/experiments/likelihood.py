"""The paper's likelihood experiments: does a topic vector leave the model's other abilities
alone? As functions and as `actadd eval relevance` / `actadd eval knowledge`:

    relevance  perplexity by relevance (the paper's OpenWebText experiment): documents cut into
               chunks of 100 tokens, each chunk's relevance the density of topic words in it;
               per relevance bin, perplexity unsteered and steered and their ratio. Claim:
               perplexity falls on text about the topic, unrelated text (relevance 0) unharmed.
    knowledge  P@K on LAMA-format facts (ConceptNet in the paper): the masked sentence cut at
               [MASK] is the prompt, the object (one token) the answer; P@K for K = 1..10,
               unsteered and steered. Claim: general knowledge is preserved.

Both steer with " weddings" - "" at layer 16 of GPT-2-XL's 48 (the same fraction of another
model's depth: `paper_layer`), coefficient 1, front, and mask as `actadd logprobs` does: the
predictions made where the addition sits are left out (there the model reads the steering
prompt's activations, not the text). Records go to OUT/results.jsonl as each batch finishes (a
rerun with the same settings resumes), then OUT/summary.json, summary.csv and TASK.png. The
batches are fixed by the settings (a resumed run batches as the first), so they can also run on
Dask workers (`workers=` / `scheduler=`, actadd.experiments.runner) with the same records. The
documents and facts are read by actadd.experiments.data.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer

from ..measure import length_batches, log_softmax, picked_logprobs, topic_pattern
from ..output import progress as progress_bar
from ..output import writable_folder, write_outputs
from ..provenance import fingerprint
from ..steering import SteeringVector, site, steering_vector, x_vector
from . import stats
from .data import WEDDING_WORDS, Fact, digest
from .results import NUMBER, Interrupted, ResultsFile
from .runner import ModelContext, open_runner

# The records of results.jsonl, by kind: what a resumed run reads back (results.check_record).
CHUNK_RECORDS = {"chunk": {"id": int, "source": str, "start": int, "words": int, "topic_words": int,
                           "relevance": NUMBER, "predictions": int, "unsteered_logprob": NUMBER,
                           "steered_logprob": NUMBER}}
FACT_RECORDS = {"fact": {"id": int, "source": str, "prompt": str, "obj": str, "target": int, "rank_unsteered": int,
                         "rank_steered": int, "logprob_unsteered": NUMBER, "logprob_steered": NUMBER}}
PAPER_LAYER = (16, 48)       # " weddings" - "" at layer 16 of GPT-2-XL's 48 blocks
KS = tuple(range(1, 11))     # P@1 .. P@10


def paper_layer(n_layer: int, layer: int = PAPER_LAYER[0], of: int = PAPER_LAYER[1]) -> int:
    """The paper's layer `layer` of `of` blocks, at the same fraction of a model with `n_layer`
    blocks (rounded to the nearest block): 16 of 48 is 4 of GPT-2's 12, 1 of tiny-books' 4."""
    return min(n_layer - 1, int(math.floor(layer * n_layer / of + 0.5)))


@dataclass
class Result:
    """A finished (or resumed and finished) experiment: settings, records, summary, files."""

    task: str
    settings: dict
    records: list[dict]
    summary: dict
    written: list[Path] = field(default_factory=list)


def topic_vector(model: Transformer, tokenizer: Tokenizer, plus: str, minus: str, coeff: float, layer: int,
                 padding: str) -> SteeringVector:
    """The x-vector plus - minus at `layer`; a layer past the model's is an error naming the
    paper's layer rescaled to it."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ValueError(f"layer={layer!r}: expected a block number >= 0")
    if layer >= model.config.n_layer:
        raise ValueError(f"layer {layer}: this model has blocks 0 to {model.config.n_layer - 1} "
                         f"(the paper's layer 16 of 48 is layer {paper_layer(model.config.n_layer)} here)")
    return steering_vector(model, x_vector(tokenizer, plus, minus, coeff, layer, padding), padding=padding)


def _steered_pass(model, tokens, mask, vector, layer, lengths):
    """Log-probs of the next tokens, unsteered and steered, [batch, pos - 1] each, on the host.
    The unsteered pass keeps resid_pre at `layer`; the steered one starts there (the blocks
    before it are the same unsteered computation)."""
    logits, cache = model.run_with_cache(tokens, names=[site(layer)], attention_mask=mask)
    plain = model.backend.to_host(picked_logprobs(logits, tokens))
    logits = model.run_with_hooks(tokens, vector.hooks(prompt_lengths=lengths), attention_mask=mask,
                                  start_at_layer=layer, resid_pre=cache[site(layer)])
    return plain, model.backend.to_host(picked_logprobs(logits, tokens))


def _todo(results: ResultsFile, kind: str, batch_ids: list[list[int]]) -> tuple[list[int], int]:
    """The batches (by index) not wholly in the results file, and how many items are. A batch a
    stop cut short has its records dropped and is done again whole, so that no record depends
    on where a run stopped."""
    have = {r["id"] for r in results.records if r.get("kind") == kind}
    complete = [all(i in have for i in ids) for ids in batch_ids]
    kept = {i for ids, c in zip(batch_ids, complete) if c for i in ids}
    results.keep(lambda r: r.get("kind") != kind or r["id"] in kept)
    return [k for k, c in enumerate(complete) if not c], len(kept)


def _run_batches(results: ResultsFile, todo: list, work, model, tokenizer, progress: bool, desc: str, unit: str,
                 workers, scheduler, worker_backend, batch_ids: list[list[int]]) -> None:
    """work(context, batch) for every batch of `todo`, here or on Dask workers, each batch's
    records appended as it finishes; if they finish out of order the file is then put in
    batch order."""
    bar = progress_bar(sum(len(b) for b in todo), progress, desc, unit)
    total = sum(len(ids) for ids in batch_ids)
    saved = total - sum(len(b) for b in todo)
    try:
        with open_runner(workers, scheduler, worker_backend) as runner:
            for _, records in runner.run(work, ModelContext(model, tokenizer), todo):
                results.append(records)
                saved += len(records)
                bar.update(len(records))
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(results.path, saved, total, unit) from None
    bar.close()
    batch_of = {i: k for k, ids in enumerate(batch_ids) for i in ids}     # batch by batch, by id within, as
    results.reorder(lambda r: (batch_of.get(r.get("id"), -1), r.get("id", -1)))   # one process writes it


# ---------------------------------------------------------------------------------------------
# Perplexity by relevance


@dataclass(frozen=True)
class Chunk:
    id: int              # its place among all chunks (documents in order, then position)
    source: str          # the document: file:line or file name
    start: int           # its first token's offset in the document's tokens
    tokens: tuple[int, ...]   # chunk_tokens token ids (no <|endoftext|>)
    text: str            # the tokens decoded
    topic_words: int     # whole-word occurrences of the topic words (any case)
    words: int           # whitespace-separated words of the text

    @property
    def relevance(self) -> float:
        """Topic-word density: topic words / words, as the authors' script scores documents."""
        return self.topic_words / self.words if self.words else 0.0


def chunk_documents(documents: Sequence[tuple[str, str]], tokenizer: Tokenizer, chunk_tokens: int = 100,
                    words: Sequence[str] = WEDDING_WORDS) -> tuple[list[Chunk], dict]:
    """Each document's tokens cut into chunks of exactly `chunk_tokens`, and each chunk scored
    for topic-word density. A document's last, shorter piece is not a chunk: what is dropped
    is counted in the second value (documents shorter than one chunk, tokens left over)."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 2:
        raise ValueError(f"chunk_tokens={chunk_tokens!r}: expected an integer >= 2")
    pattern = topic_pattern(words)
    chunks, dropped = [], {"documents": len(documents), "documents_shorter_than_a_chunk": 0, "tail_tokens": 0}
    for source, text in documents:
        ids = tokenizer.encode(text, disallowed_special=())   # data is text: "<|endoftext|>" in it is not special
        if len(ids) < chunk_tokens:
            dropped["documents_shorter_than_a_chunk"] += 1
        dropped["tail_tokens"] += len(ids) % chunk_tokens
        for start in range(0, len(ids) - chunk_tokens + 1, chunk_tokens):
            piece = tuple(ids[start:start + chunk_tokens])
            decoded = tokenizer.decode(list(piece))
            chunks.append(Chunk(len(chunks), source, start, piece, decoded, len(pattern.findall(decoded)),
                                len(decoded.split())))
    return chunks, dropped


def select_chunks(chunks: list[Chunk], max_chunks: int | None, seed: int = 0) -> list[Chunk]:
    """All chunks, or at most `max_chunks`: the most relevant half (by relevance, then order)
    among those with a topic word, and the rest drawn at random (default_rng(seed)) among those
    without; returned in their original order. The authors' script picked documents this way."""
    if max_chunks is None or max_chunks >= len(chunks):
        return chunks
    if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ValueError(f"max_chunks={max_chunks!r}: expected a positive integer")
    relevant = sorted((c for c in chunks if c.topic_words), key=lambda c: (-c.relevance, c.id))[:max_chunks // 2]
    zero = [c for c in chunks if not c.topic_words]
    fill = min(len(zero), max_chunks - len(relevant))
    picked = np.random.default_rng(seed).choice(len(zero), size=fill, replace=False) if fill else []
    return sorted(relevant + [zero[i] for i in picked], key=lambda c: c.id)


def relevance_bins(relevances: Sequence[float], edges: Sequence[float] | None = None,
                   quantiles: int = 4) -> tuple[list[dict], list[int]]:
    """Bins, and each value's bin. Bin 0 holds relevance exactly 0 (no topic word). The rest are
    (e_i, e_{i+1}] for the `edges` given, or for the `quantiles`-quantiles of the positive values
    (edges 0, q_1, ..., max; equal quantiles merge, so a bin is never empty by construction)."""
    values = np.asarray(relevances, dtype=np.float64)
    if values.size and (values.min() < 0 or not np.isfinite(values).all()):
        raise ValueError("relevances must be finite and >= 0")
    positive = values[values > 0]
    if edges is None:
        if isinstance(quantiles, bool) or not isinstance(quantiles, int) or quantiles < 1:
            raise ValueError(f"quantiles={quantiles!r}: expected an integer >= 1")
        cuts = np.quantile(positive, np.linspace(0, 1, quantiles + 1))[1:] if positive.size else np.array([])
        edges = [0.0] + sorted(set(float(c) for c in cuts))
    else:
        edges = [float(e) for e in edges]
        if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"relevance bin edges {edges}: expected at least two increasing values, the first >= 0")
        if positive.size and positive.max() > edges[-1]:
            raise ValueError(f"a chunk has relevance {positive.max():.4g}, above the last bin edge {edges[-1]:g}")
        if positive.size and positive.min() <= edges[0]:
            raise ValueError(f"a chunk has relevance {positive.min():.4g}, at or below the first bin edge {edges[0]:g}")
    bins = [{"bin": "0", "low": 0.0, "high": 0.0}]
    bins += [{"bin": f"({a:.4g}, {b:.4g}]", "low": a, "high": b} for a, b in zip(edges, edges[1:])]
    which = [0 if v == 0 else 1 + int(np.searchsorted(edges, v, side="left")) - 1 for v in values]
    return bins, which


@dataclass(frozen=True)
class RelevanceBatch:
    """Chunks scored in one pass: what a worker needs besides the model."""

    vector: object                 # the SteeringVector
    layer: int
    masked: np.ndarray             # [chunk_tokens] predictions left out
    chunks: tuple
    tokens: np.ndarray             # [batch, pos] with BOS
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.chunks)


def relevance_batch(context: ModelContext, batch: RelevanceBatch) -> list[dict]:
    """One batch of chunks: the sum of each chunk's next-token log-probs, unsteered and steered,
    over the predictions not masked. Sorted by chunk id."""
    plain, steered = _steered_pass(context.model, batch.tokens, batch.mask, batch.vector, batch.layer,
                                   [len(c.tokens) + 1 for c in batch.chunks])
    records = []
    for b, c in enumerate(batch.chunks):
        u, s = plain[b][~batch.masked].astype(np.float64), steered[b][~batch.masked].astype(np.float64)
        records.append({"kind": "chunk", "id": c.id, "source": c.source, "start": c.start, "words": c.words,
                        "topic_words": c.topic_words, "relevance": c.relevance, "predictions": int(u.size),
                        "unsteered_logprob": float(u.sum()), "steered_logprob": float(s.sum())})
    return sorted(records, key=lambda r: r["id"])


def relevance(model: Transformer, tokenizer: Tokenizer, documents: Sequence[tuple[str, str]], out: str | Path | None = None, *,
              plus: str = " weddings", minus: str = "", layer: int | None = None, coeff: float = 1.0,
              words: Sequence[str] = WEDDING_WORDS, chunk_tokens: int = 100, edges: Sequence[float] | None = None,
              quantiles: int = 4, padding: str = "space", max_chunks: int | None = None, seed: int = 0,
              batch_tokens: int = 1024, progress: bool = True, workers: int | None = None,
              scheduler: str | None = None, worker_backend: str | None = None) -> Result:
    """Perplexity by relevance. Every chunk (or `max_chunks` of them, chosen as the authors chose
    documents: the most relevant half, then chunks without a topic word drawn at random with
    `seed` to fill the rest) gets <|endoftext|> prepended and
    its log-probs computed unsteered and steered with plus - minus at `layer` (default: the
    paper's 16 of 48, rescaled) x `coeff`; the first predictions, where the addition sits, are
    masked. Per bin: chunks, tokens, both perplexities, and the ratio steered / unsteered =
    exp(-mean over chunks of the chunk's mean log-prob difference), with a t interval over chunks."""
    if out is not None:
        writable_folder(out, "out")
    layer = paper_layer(model.config.n_layer) if layer is None else layer
    vector = topic_vector(model, tokenizer, plus, minus, coeff, layer, padding)
    chunks, dropped = chunk_documents(documents, tokenizer, chunk_tokens, words)
    chunks = select_chunks(chunks, max_chunks, seed)
    if not chunks:
        raise ValueError(f"no chunk of {chunk_tokens} tokens in the {len(documents)} documents given")
    if chunk_tokens + 1 > model.config.n_positions:
        raise ValueError(f"chunks of {chunk_tokens} tokens with BOS do not fit n_positions="
                         f"{model.config.n_positions}; use --chunk-tokens {model.config.n_positions - 1} or fewer")
    if chunk_tokens + 1 <= vector.length:
        raise ValueError(f"chunks of {chunk_tokens} tokens leave no prediction after the steering matrix's "
                         f"{vector.length} positions")
    settings = {"task": "relevance", "plus": plus, "minus": minus, "layer": layer, "coeff": float(coeff),
                "padding": padding, "words": list(words), "chunk_tokens": chunk_tokens, "chunks": len(chunks),
                "max_chunks": max_chunks, "seed": seed, "chunks_sha256": digest([c.tokens for c in chunks]),
                "model": fingerprint(model)}
    results = ResultsFile(Path(out) / "results.jsonl" if out is not None else None, settings, CHUNK_RECORDS)
    masked = vector.masked_positions(chunk_tokens + 1)[:-1]                    # [chunk_tokens] predictions
    seqs = [[tokenizer.bos_token_id, *c.tokens] for c in chunks]
    batches = [RelevanceBatch(vector, layer, masked, tuple(chunks[i] for i in rows), tokens, mask)
               for rows, tokens, mask in length_batches(seqs, batch_tokens)]
    todo, done = _todo(results, "chunk", [[c.id for c in b.chunks] for b in batches])
    if progress:
        print(f"actadd eval relevance: {len(chunks):,} chunks of {chunk_tokens} tokens from {len(documents)} documents"
              + (f"; {done:,} already in {results.path}" if done else "")
              + f"; layer {layer}, coefficient {coeff:g}; {int(masked.sum())} predictions a chunk masked",
              file=sys.stderr)
    _run_batches(results, [batches[k] for k in todo], relevance_batch, model, tokenizer, progress, "eval relevance",
                 "chunk", workers, scheduler, worker_backend, [[c.id for c in b.chunks] for b in batches])
    records = sorted((r for r in results.records if r.get("kind") == "chunk"), key=lambda r: r["id"])
    summary = summarize_relevance(records, edges, quantiles)
    summary["dropped"] = dropped
    result = Result("relevance", settings, records, summary)
    if out is not None:
        result.written = write_outputs(out, "relevance", {"settings": settings, "summary": summary},
                                       relevance_rows(summary), lambda p: plot_relevance(summary, records, p))
    return result


def _bin_summary(name: str, rows: list[dict]) -> dict:
    if not rows:
        return {"bin": name, "chunks": 0}
    n = sum(r["predictions"] for r in rows)
    diffs = [(r["steered_logprob"] - r["unsteered_logprob"]) / r["predictions"] for r in rows]
    d = stats.mean_interval(diffs)
    return {"bin": name, "chunks": len(rows), "tokens": n,
            "relevance_mean": float(np.mean([r["relevance"] for r in rows])),
            "relevance_min": min(r["relevance"] for r in rows), "relevance_max": max(r["relevance"] for r in rows),
            "unsteered_perplexity": math.exp(-sum(r["unsteered_logprob"] for r in rows) / n),
            "steered_perplexity": math.exp(-sum(r["steered_logprob"] for r in rows) / n),
            "mean_logprob_diff": d.as_dict(),
            "perplexity_ratio": {"value": math.exp(-d.value), "low": math.exp(-d.high) if d.n > 1 else None,
                                 "high": math.exp(-d.low) if d.n > 1 else None, "n": d.n,
                                 "method": "exp(-t interval of the mean log-prob difference over chunks)"}}


def summarize_relevance(records: list[dict], edges=None, quantiles: int = 4) -> dict:
    bins, which = relevance_bins([r["relevance"] for r in records], edges, quantiles)
    out = []
    for k, b in enumerate(bins):
        cell = _bin_summary(b["bin"], [r for r, w in zip(records, which) if w == k])
        out.append({**cell, "low": b["low"], "high": b["high"]})
    relevant = [r for r in records if r["relevance"] > 0]
    notes = []
    if not relevant:
        notes.append("no chunk has a topic word (relevance > 0): there is no relevant text to compare; the only "
                     "bin is relevance 0")
        out = out[:1]
    if not any(r["relevance"] == 0 for r in records):
        notes.append("every chunk has a topic word: there is no unrelated (relevance 0) text to compare")
    return {"task": "relevance", "bins": out, "all": _bin_summary("all", records),
            "relevant": _bin_summary("relevance > 0", relevant), "notes": notes}


def relevance_rows(summary: dict) -> list[dict]:
    rows = []
    for cell in summary["bins"] + [summary["all"], summary["relevant"]]:
        row = {k: cell.get(k) for k in ("bin", "chunks", "tokens", "relevance_mean", "relevance_min", "relevance_max",
                                         "unsteered_perplexity", "steered_perplexity")}
        if cell.get("chunks"):
            r = cell["perplexity_ratio"]
            row.update(perplexity_ratio=r["value"], perplexity_ratio_low=r["low"], perplexity_ratio_high=r["high"])
        rows.append(row)
    return rows


def plot_relevance(summary: dict, records: list[dict], path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["relevance"] for r in records]
    y = [math.exp(-(r["steered_logprob"] - r["unsteered_logprob"]) / r["predictions"]) for r in records]
    ax.scatter(x, y, s=6, color="0.75", label=f"a chunk ({len(records)})")
    cells = [c for c in summary["bins"] if c.get("chunks")]
    xs = [c["relevance_mean"] for c in cells]
    ys = [c["perplexity_ratio"]["value"] for c in cells]
    err = np.array([[v - (c["perplexity_ratio"]["low"] if c["perplexity_ratio"]["low"] is not None else v),
                     (c["perplexity_ratio"]["high"] if c["perplexity_ratio"]["high"] is not None else v) - v]
                    for c, v in zip(cells, ys)]).T
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color="tab:blue", label="bin mean, 95% interval")
    ax.axhline(1.0, color="0.4", lw=1, ls="--")
    ax.set(xlabel="relevance (topic words per word)", ylabel="perplexity ratio, steered / unsteered",
           title="perplexity by relevance")
    _save(fig, ax, path)


def _save(fig, ax, path) -> None:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def relevance_table(summary: dict) -> str:
    lines = [f"{'bin':<22} {'chunks':>7} {'tokens':>8} {'ppl unsteered':>14} {'ppl steered':>12}  ratio [95%]"]
    for cell in summary["bins"] + [summary["relevant"], summary["all"]]:
        if not cell.get("chunks"):
            lines.append(f"{cell['bin']:<22} {0:>7}")
            continue
        r = cell["perplexity_ratio"]
        interval = f"[{r['low']:.4f}, {r['high']:.4f}]" if r["low"] is not None else "[one chunk: no interval]"
        lines.append(f"{cell['bin']:<22} {cell['chunks']:>7} {cell['tokens']:>8} {cell['unsteered_perplexity']:>14.2f} "
                     f"{cell['steered_perplexity']:>12.2f}  {r['value']:.4f} {interval}")
    lines += [f"note: {n}" for n in summary["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Knowledge: P@K on LAMA-format facts


def ranks(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Each row's target's rank, 0 for the most likely: the number of other tokens whose logit
    is at least the target's. A tie counts against the target, whichever its id: P@K never
    credits the object with a place it shares (the conservative reading)."""
    logits = np.asarray(logits)
    t = np.asarray(targets)
    own = logits[np.arange(len(t)), t][:, None]
    return (logits >= own).sum(axis=1) - 1


@dataclass(frozen=True)
class KnowledgeBatch:
    vector: object                 # the SteeringVector
    facts: tuple
    tokens: np.ndarray             # [batch, pos] with BOS, left-padded
    mask: np.ndarray
    lengths: tuple                 # each prompt's tokens with BOS

    def __len__(self) -> int:
        return len(self.facts)


def knowledge_batch(context: ModelContext, batch: KnowledgeBatch) -> list[dict]:
    """One batch of facts: the object's rank and log-prob after each prompt, unsteered and
    steered over the whole prompt. Sorted by fact id."""
    model = context.model
    targets = [f.target for f in batch.facts]
    rows = np.arange(len(targets))
    plain = model.backend.to_host(model.run_with_hooks(batch.tokens, (), attention_mask=batch.mask, last_only=True)[:, -1])
    hooks = batch.vector.hooks(prompt_lengths=list(batch.lengths))
    steered = model.backend.to_host(model.run_with_hooks(batch.tokens, hooks, attention_mask=batch.mask,
                                                         last_only=True)[:, -1])
    lp_plain = log_softmax(plain.astype(np.float64))[rows, targets]
    lp_steered = log_softmax(steered.astype(np.float64))[rows, targets]
    records = [{"kind": "fact", "id": f.id, "source": f.source, "group": f.group, "relation": f.relation,
                "prompt": f.prompt, "obj": f.obj, "target": f.target, "rank_unsteered": int(ru), "rank_steered": int(rs), "logprob_unsteered": float(a),
                "logprob_steered": float(b)}
               for f, ru, rs, a, b in zip(batch.facts, ranks(plain, targets), ranks(steered, targets), lp_plain,
                                          lp_steered)]
    return sorted(records, key=lambda r: r["id"])


def knowledge(model: Transformer, tokenizer: Tokenizer, facts: Sequence[Fact], out: str | Path | None = None, *,
              plus: str = " weddings", minus: str = "", layer: int | None = None, coeff: float = 1.0,
              padding: str = "space", limit: int | None = None, skipped: Sequence[dict] = (),
              batch_tokens: int = 1024, progress: bool = True, workers: int | None = None,
              scheduler: str | None = None, worker_backend: str | None = None) -> Result:
    """P@K for K = 1..10: the fraction of facts whose object is among the K most likely next
    tokens after the prompt (with BOS first), unsteered and steered with plus - minus
    at `layer` (default the paper's 16 of 48, rescaled) x `coeff` over the whole prompt; each
    with its Wilson interval, and the paired difference (t over facts). Prompts shorter than the
    steering matrix, or too long for the context, are skipped and counted."""
    if out is not None:
        writable_folder(out, "out")
    layer = paper_layer(model.config.n_layer) if layer is None else layer
    vector = topic_vector(model, tokenizer, plus, minus, coeff, layer, padding)
    facts = list(facts)[:limit] if limit is not None else list(facts)
    skipped = list(skipped)
    kept = []
    for f in facts:
        n = len(tokenizer.encode(f.prompt, disallowed_special=())) + 1
        if n < vector.length:
            skipped.append({"source": f.source, "group": f.group,
                            "reason": f"prompt of {n} tokens is shorter than the steering matrix"})
        elif n > model.config.n_positions:
            skipped.append({"source": f.source, "group": f.group, "reason": f"prompt of {n} tokens exceeds n_positions"})
        else:
            kept.append(f)
    if not kept:
        raise ValueError(f"no fact left to test: all {len(facts)} were skipped ({skipped[-1]['reason']})")
    settings = {"task": "knowledge", "plus": plus, "minus": minus, "layer": layer, "coeff": float(coeff),
                "padding": padding, "facts": len(kept), "facts_sha256": digest(
                    [[f.prompt, f.obj, f.target] for f in kept]), "model": fingerprint(model)}
    results = ResultsFile(Path(out) / "results.jsonl" if out is not None else None, settings, FACT_RECORDS)
    seqs = [[tokenizer.bos_token_id] + tokenizer.encode(f.prompt, disallowed_special=()) for f in kept]
    batches = [KnowledgeBatch(vector, tuple(kept[i] for i in rows), tokens, mask, tuple(len(seqs[i]) for i in rows))
               for rows, tokens, mask in length_batches(seqs, batch_tokens)]
    todo, done = _todo(results, "fact", [[f.id for f in b.facts] for b in batches])
    if progress:
        print(f"actadd eval knowledge: {len(kept):,} facts ({len(skipped)} skipped)"
              + (f"; {done:,} already in {results.path}" if done else "") + f"; layer {layer}, coefficient {coeff:g}",
              file=sys.stderr)
    _run_batches(results, [batches[k] for k in todo], knowledge_batch, model, tokenizer, progress, "eval knowledge",
                 "fact", workers, scheduler, worker_backend, [[f.id for f in b.facts] for b in batches])
    records = sorted((r for r in results.records if r.get("kind") == "fact"), key=lambda r: r["id"])
    summary = summarize_knowledge(records)
    summary["skipped"] = {"count": len(skipped), "reasons": _count_reasons(skipped)}
    for group, cell in summary["groups"].items():
        mine = [s for s in skipped if s.get("group", "") == group]
        cell["skipped"] = {"count": len(mine), "reasons": _count_reasons(mine)}
    result = Result("knowledge", settings, records, summary)
    if out is not None:
        result.written = write_outputs(out, "knowledge", {"settings": settings, "summary": summary, "skipped": skipped},
                                       summary["rows"], lambda p: plot_knowledge(summary, p))
    return result


SKIP_KINDS = (("is shorter than the steering matrix", "prompts shorter than the steering matrix"),
              ("exceeds n_positions", "prompts longer than the context"),
              ("tokens", "objects of several tokens"),
              ("[MASK]", "sentences without exactly one [MASK]"))


def _count_reasons(skipped: Sequence[dict]) -> dict:
    """How many were skipped for each kind of reason (each one's own reason is in the list)."""
    out: dict[str, int] = {}
    for s in skipped:
        kind = next(name for needle, name in SKIP_KINDS if needle in s["reason"])
        out[kind] = out.get(kind, 0) + 1
    return out


def summarize_knowledge(records: list[dict], ks: Sequence[int] = KS) -> dict:
    """P@K over all facts (rows), and per LAMA group (ConceptNet, Google-RE, T-REx) where the
    facts name one: each group's P@1 and P@10, unsteered, steered and the paired difference."""
    out = _p_at_k(records, ks)
    groups = sorted({r.get("group", "") for r in records})
    out["groups"] = {}
    if groups != [""]:
        for group in groups:
            mine = _p_at_k([r for r in records if r.get("group", "") == group], (1, 10))
            out["groups"][group] = {"facts": mine["facts"], "rows": mine["rows"],
                                    "relations": len({r.get("relation", "") for r in records
                                                      if r.get("group", "") == group})}
    return out


def _p_at_k(records: list[dict], ks: Sequence[int]) -> dict:
    n = len(records)
    rows = []
    for k in ks:
        hit_u = [float(r["rank_unsteered"] < k) for r in records]
        hit_s = [float(r["rank_steered"] < k) for r in records]
        u, s = stats.wilson(int(sum(hit_u)), n), stats.wilson(int(sum(hit_s)), n)
        d = stats.paired_difference(hit_s, hit_u)
        rows.append({"k": k, "facts": n, "unsteered": u.value, "unsteered_low": u.low, "unsteered_high": u.high,
                     "steered": s.value, "steered_low": s.low, "steered_high": s.high,
                     "difference": d.value, "difference_low": d.low, "difference_high": d.high})
    lp = stats.paired_difference([r["logprob_steered"] for r in records], [r["logprob_unsteered"] for r in records])
    return {"task": "knowledge", "facts": n, "rows": rows, "target_logprob_difference": lp.as_dict()}


def plot_knowledge(summary: dict, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in summary["rows"]]
    for kind, color in (("unsteered", "0.4"), ("steered", "tab:blue")):
        ax.plot(ks, [r[kind] for r in summary["rows"]], marker="o", color=color, label=kind)
        ax.fill_between(ks, [r[f"{kind}_low"] for r in summary["rows"]], [r[f"{kind}_high"] for r in summary["rows"]],
                        color=color, alpha=0.15)
    ax.set(xlabel="K", ylabel="P@K", xticks=ks, ylim=(0, 1.02),
           title=f"P@K over {summary['facts']} facts (Wilson 95%)")
    _save(fig, ax, path)


def knowledge_table(summary: dict) -> str:
    lines = [f"{'K':>3}  {'unsteered':>24}  {'steered':>24}  {'steered - unsteered':>26}"]
    for r in summary["rows"]:
        lines.append(f"{r['k']:>3}  {r['unsteered']:.3f} [{r['unsteered_low']:.3f}, {r['unsteered_high']:.3f}]  "
                     f"{r['steered']:.3f} [{r['steered_low']:.3f}, {r['steered_high']:.3f}]  "
                     f"{r['difference']:+.3f} [{_signed(r['difference_low'])}, {_signed(r['difference_high'])}]")
    lp = summary["target_logprob_difference"]
    lines.append(f"facts: {summary['facts']}; skipped: {summary.get('skipped', {}).get('count', 0)}; the object's "
                 f"log-prob, steered - unsteered: {lp['value']:+.4f} [{_signed(lp['low'])}, {_signed(lp['high'])}]")
    for group, cell in summary.get("groups", {}).items():
        p1 = cell["rows"][0]
        lines.append(f"  {group}: {cell['facts']} facts ({cell.get('skipped', {}).get('count', 0)} skipped), "
                     f"P@1 {p1['unsteered']:.3f} -> {p1['steered']:.3f}, {p1['difference']:+.3f} "
                     f"[{_signed(p1['difference_low'])}, {_signed(p1['difference_high'])}]")
    return "\n".join(lines)


def _signed(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}"

