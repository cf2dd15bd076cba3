"""The paper's steering experiments (Turner et al., sections on topic, sentiment and toxicity),
as functions and as `actadd eval TASK`:

    topic      one prompt sampled N times, unsteered and steered at each layer x coefficient:
               the fraction of completions with a topic word, topic words per completion
    sentiment  prompts of one sentiment cut to T tokens; unsteered, steered, and the steering
               phrase prepended as text (prompting): the fraction a scorer labels with the target
    toxicity   RealToxicityPrompts prompts, k samples each: mean score, the fraction scoring >= 0.5,
               the expected maximum over the k samples

For every task: fluency (the continuation's perplexity under a reference model), optionally
relevance (prompt-continuation cosine similarity of sentence embeddings), each rate with its
count and a 95% interval, and each condition minus the unsteered one as a paired difference
(same prompts, same seeds: sample j of prompt p draws from default_rng([seed, p, j]) in every
condition).

A run is a list of units of work, each one generate() call: a few (condition, prompt) pairs,
each row steered by its own condition's vector (row_hooks), and some of their samples. The units
run here or on Dask workers (actadd.experiments.runner); a finished unit's records are appended
to OUT/results.jsonl at once; a rerun with the same settings skips what is there (a unit cut
short by a crash is done again whole, so the records do not depend on where it stopped), and
other settings are refused. The data readers are in actadd.experiments.data.

The vector is the x-vector plus - minus at each layer x coefficient, or any steering vector
(ActAdd's matrix or a direction, actadd.steering.Steering): `unit_vector` for topic (one per
layer, at coefficient 1), `vector` for sentiment and toxicity.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import minigpt
from minigpt import Tokenizer, Transformer

from ..measure import next_token_logprobs, topic_pattern
from ..output import progress as progress_bar
from ..output import writable_folder, write_outputs
from ..provenance import ModelSource, fingerprint
from ..steering import PAPER_SAMPLING, Steering, row_hooks, steering_vector, x_vector
from . import stats
from .data import WEDDING_WORDS, Prompt, digest
from .results import NUMBER, OPTIONAL_NUMBER, Interrupted, ResultsFile
from .runner import Here, open_runner
from .scorers import SENTIMENT, TOXICITY, Scorer, get_scorer, refuse_pickles

TOPIC_PROMPT = "I went up to my friend and said"
DIRECTIONS = {"neg-to-pos": ("negative", "positive", "Love", "Hate"),
              "pos-to-neg": ("positive", "negative", "Hate", "Love")}   # source, target, plus, minus


# ---------------------------------------------------------------------------------------------
# Conditions and units of work


@dataclass(frozen=True)
class Condition:
    """How a prompt is sampled: plain, steered by `vector`, or with `prefix` text put before it."""

    name: str
    vector: Steering | None = None
    prefix: str = ""
    layer: int | None = None
    coeff: float | None = None


@dataclass(frozen=True)
class Unit:
    rows: tuple[tuple[Condition, Prompt], ...]   # (condition, prompt) pairs, each with all of `samples`
    samples: range                                # the same sample numbers for each pair

    @property
    def keys(self) -> list[tuple[str, int, int]]:
        return [(c.name, p.id, j) for c, p in self.rows for j in self.samples]


def units(conditions: Sequence[Condition], prompts: Sequence[Prompt], samples: int, batch_rows: int) -> list[Unit]:
    """The (condition, prompt) pairs in order, condition by condition, packed into units of at
    most `batch_rows` rows with all their samples (a pair with more samples than that is split
    into slices, each with its own prompt pass). A unit may hold several conditions: each row is
    steered by its own vector (`row_hooks`), so a grid of layers x coefficients runs as full
    batches. Fixed by the settings, so a resumed run batches as the first."""
    pairs = [(c, p) for c in conditions for p in prompts]
    if samples >= batch_rows:
        return [Unit((pair,), range(j, min(j + batch_rows, samples))) for pair in pairs
                for j in range(0, samples, batch_rows)]
    per = batch_rows // samples
    return [Unit(tuple(pairs[i:i + per]), range(samples)) for i in range(0, len(pairs), per)]


@dataclass
class Context:
    """What every unit of a run needs: the models, the sampling, and the optional extras."""

    model: Transformer
    tokenizer: Tokenizer
    max_new_tokens: int
    sampling: dict
    seed: int
    fluency: tuple[Transformer, Tokenizer] | None = None    # None: the model itself
    relevance: Callable | None = None                # (prompts, continuations) -> cosines
    topic: object = None                             # a compiled topic-word pattern
    relevance_model: str | None = None               # its name, for workers that build it again

    def recipe(self, source: Callable[[Transformer], ModelSource]) -> ContextRecipe:
        """What another process needs to build this context again (see runner.py)."""
        return ContextRecipe(source(self.model), source(self.fluency[0]) if self.fluency else None,
                             self.relevance_model, self.max_new_tokens, tuple(sorted(self.sampling.items())), self.seed,
                             self.topic)


@dataclass(frozen=True)
class ContextRecipe:
    model: ModelSource
    fluency: ModelSource | None
    relevance_model: str | None
    max_new_tokens: int
    sampling: tuple
    seed: int
    topic: object                                    # a compiled pattern, or None

    def build(self, load: Callable[[ModelSource], tuple]) -> Context:
        model, tokenizer = load(self.model)
        return Context(model, tokenizer, self.max_new_tokens, dict(self.sampling), self.seed,
                       load(self.fluency) if self.fluency else None,
                       _relevance(self.relevance_model) if self.relevance_model else None, self.topic,
                       self.relevance_model)


def sample_unit(ctx: Context, unit: Unit) -> list[dict]:
    """The unit's completions, one record each: prompt id, sample, seed, condition, text,
    tokens, and the fluency of the continuation (and its relevance, topic word count)."""
    tok, k = ctx.tokenizer, len(unit.samples)
    prompt_ids = [p.tokens(tok) for _, p in unit.rows]
    ids = [[pid[0]] + (tok.encode(c.prefix) if c.prefix else []) + pid[1:] for (c, _), pid in zip(unit.rows, prompt_ids)]
    seeds = [[ctx.seed, p.id, j] for _, p in unit.rows for j in unit.samples]
    vectors = [c.vector for c, _ in unit.rows]
    # Each prompt pass steers its whole prompt, row by row with that row's condition's vector.
    hooks = row_hooks(vectors) if any(v is not None for v in vectors) else ()
    out = minigpt.generate(ctx.model, ids, tok, max_new_tokens=ctx.max_new_tokens, fwd_hooks=hooks,
                           samples=k, row_seeds=seeds, **ctx.sampling)
    records = []
    for row, (new, seed) in enumerate(zip(out.tokens, seeds)):
        c, prompt = unit.rows[row // k]
        stopped = bool(new) and new[-1] == tok.eos_token_id
        kept = new[:-1] if stopped else new
        records.append({"kind": "sample", "condition": c.name, "prompt_id": prompt.id, "sample": seed[2],
                        "seed": seed, "layer": c.layer, "coeff": c.coeff, "prompt": prompt.text,
                        "text": tok.decode(kept), "tokens": kept, "stopped": stopped})
    _add_fluency(ctx, records, [prompt_ids[r // k] for r in range(len(records))])
    if ctx.relevance is not None:
        for r, cos in zip(records, ctx.relevance([r["prompt"] for r in records], [r["text"] for r in records])):
            r["relevance"] = float(cos)
    if ctx.topic is not None:
        for r in records:
            r["topic_words"] = len(ctx.topic.findall(r["text"]))
    return records


def _add_fluency(ctx: Context, records: list[dict], prompt_ids: list[list[int]]) -> None:
    """Each continuation's log-probs given its prompt (without a prompting prefix, so that every
    condition is judged on the same context), under the reference model, unsteered."""
    if ctx.fluency is None:
        model, seqs = ctx.model, [p + r["tokens"] for p, r in zip(prompt_ids, records)]
        lengths = [len(r["tokens"]) for r in records]
    else:
        model, tok = ctx.fluency
        conts = [tok.encode(r["text"], disallowed_special=()) for r in records]
        seqs = [[tok.bos_token_id] + tok.encode(r["prompt"], disallowed_special=()) + c for r, c in zip(records, conts)]
        lengths = [len(c) for c in conts]
    too_long = [len(s) for s in seqs if len(s) > model.config.n_positions]
    if too_long:
        raise ValueError(f"a prompt and continuation of {too_long[0]} tokens do not fit the fluency model's "
                         f"n_positions={model.config.n_positions}")
    logprobs = next_token_logprobs(model, seqs)
    for r, lp, n in zip(records, logprobs, lengths):
        total = float(lp[len(lp) - n:].astype(np.float64).sum()) if n else 0.0
        r["fluency"] = {"tokens": n, "logprob": total, "perplexity": math.exp(-total / n) if n else None}


def score_records(scorer: Scorer, records: list[dict]) -> list[dict]:
    scores = scorer([r["text"] for r in records])
    return [{"kind": "score", "condition": r["condition"], "prompt_id": r["prompt_id"], "sample": r["sample"],
             "scorer": scorer.name, "score": s, "label": scorer.label(s)} for r, s in zip(records, scores)]


# ---------------------------------------------------------------------------------------------
# Running a task


# The records of results.jsonl, by kind: what a resumed run reads back (results.check_record).
RECORDS = {
    "sample": {"condition": str, "prompt_id": int, "sample": int, "seed": list, "layer": (int, type(None)),
               "coeff": OPTIONAL_NUMBER, "prompt": str, "text": str, "tokens": list, "stopped": bool,
               "fluency": {"tokens": int, "logprob": NUMBER, "perplexity": OPTIONAL_NUMBER}},
    "score": {"condition": str, "prompt_id": int, "sample": int, "scorer": str, "score": NUMBER, "label": str},
}


@dataclass
class Run:
    """A finished (or resumed and finished) run: its settings, records and summary."""

    task: str
    settings: dict
    samples: list[dict]
    scores: dict = field(default_factory=dict)       # (condition, prompt id, sample) -> score record
    summary: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def execute(task: str, ctx: Context, conditions: list[Condition], prompts: list[Prompt], samples: int,
            settings: dict, out: str | Path | None, scorer: Scorer | None, batch_rows: int,
            show_progress: bool, runner=None) -> Run:
    """Every unit not yet in OUT/results.jsonl, then every sample not yet scored; records are
    appended as each unit finishes. `runner` (runner.open_runner; default Here): where the units
    run; if they finish out of order, the file is put in unit order at the end."""
    runner = runner or Here()
    results = ResultsFile(Path(out) / "results.jsonl" if out is not None else None, settings, RECORDS)
    work = units(conditions, prompts, samples, batch_rows)
    have = {(r["condition"], r["prompt_id"], r["sample"]) for r in results.records if r["kind"] == "sample"}
    complete = [all(k in have for k in u.keys) for u in work]
    done = {k for u, c in zip(work, complete) if c for k in u.keys}
    dropped = results.keep(lambda r: (r["condition"], r["prompt_id"], r["sample"]) in done)
    todo = [u for u, c in zip(work, complete) if not c]
    rows_todo = sum(len(u.keys) for u in todo)
    total_rows = sum(len(u.keys) for u in work)
    if show_progress:
        said = f"actadd eval {task}: {total_rows:,} samples in {len(work)} batches"
        if rows_todo < total_rows:
            said += f"; {total_rows - rows_todo:,} already in {results.path}"
        if dropped:
            said += f" (dropped {dropped} records of a batch a stop cut short: it is redone whole)"
        said += (f"; to generate: {rows_todo:,} samples x {ctx.max_new_tokens} new tokens = at most "
                 f"{rows_todo * ctx.max_new_tokens:,} tokens" if rows_todo else "; nothing left to generate")
        if runner.describe():
            said += f"; on {runner.describe()}"
        print(said, file=sys.stderr)
    bar = progress_bar(rows_todo, show_progress, f"eval {task}", "sample")
    saved = total_rows - rows_todo
    try:
        for _, records in runner.run(sample_unit, ctx, todo):
            results.append(records)                   # finished generation is kept before scoring
            saved += len(records)
            if scorer is not None:
                results.append(score_records(scorer, records))
            bar.update(len(records))
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(results.path, saved, total_rows, "sample") from None
    bar.close()

    def key(r):
        return r["condition"], r["prompt_id"], r["sample"]
    samples_ = {key(r): r for r in results.records if r["kind"] == "sample"}
    if scorer is not None:                            # generated before a run stopped while scoring
        scored = {key(r) for r in results.records if r["kind"] == "score"}
        unscored = [r for k, r in samples_.items() if k not in scored]
        for i in range(0, len(unscored), batch_rows):
            results.append(score_records(scorer, unscored[i:i + batch_rows]))
    order = {k: i for i, k in enumerate(k for u in work for k in u.keys)}
    # Unit by unit, samples then scores: the file is then the same bytes whether the units ran
    # here or on Dask, and wherever a stop cut the run (scores of samples generated before it
    # come after the last unit otherwise).
    unit_of = {k: n for n, u in enumerate(work) for k in u.keys}
    results.reorder(lambda r: (unit_of[key(r)], r["kind"] != "sample", order[key(r)]))
    return Run(task, settings, sorted(samples_.values(), key=lambda r: order[key(r)]),
               {key(r): r for r in results.records if r["kind"] == "score"})


def _check_fits(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[Prompt], prefix: str, max_new_tokens: int):
    """Every prompt, with a prompting prefix and the new tokens, within the context: checked
    before any work, rather than failing a batch midway (nothing is truncated)."""
    extra = len(tokenizer.encode(prefix)) + max_new_tokens
    too_long = [p for p in prompts if len(p.tokens(tokenizer)) + extra > model.config.n_positions]
    if too_long:
        raise ValueError(f"{too_long[0].source}: the prompt and {max_new_tokens} new tokens do not fit "
                         f"n_positions={model.config.n_positions} ({len(too_long)} such prompts); truncate or "
                         "shorten the prompts, or ask for fewer new tokens")


def _check_vector(model: Transformer, vector, what: str, layer: int | None = None) -> Steering:
    """A steering vector given ready-made, checked against the model (and, for a cell of a
    grid, to steer its layer only)."""
    if not isinstance(vector, Steering):
        raise TypeError(f"{what} is {type(vector).__name__}; expected a steering vector (SteeringVector, "
                        "DirectionVector)")
    if vector.d_model != model.config.n_embd or max(vector.layers) > model.config.n_layer:
        raise ValueError(f"{what} adds {vector.d_model}-wide rows at layers {list(vector.layers)}; this model's "
                         f"residual stream is {model.config.n_embd} wide with layers 0 to {model.config.n_layer}")
    if layer is not None and list(vector.layers) != [layer] and not vector.ablates:
        raise ValueError(f"{what} steers layers {list(vector.layers)}; expected layer {layer} only")
    return vector


def _check_common(samples: int, max_new_tokens: int, batch_rows: int, seed: int) -> None:
    for name, value, least in (("samples", samples, 1), ("max_new_tokens", max_new_tokens, 1),
                               ("batch_rows", batch_rows, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name}={value!r}: expected an integer >= {least}")


def make_context(model, tokenizer, max_new_tokens, sampling, seed, fluency_model, relevance_model, topic=None):
    """A run's Context: the paper's sampling updated by `sampling`, checked before any work."""
    known = ("temperature", "top_k", "top_p", "freq_penalty", "presence_penalty")
    unknown = sorted(set(sampling) - set(known))
    if unknown:      # a misplaced argument (e.g. sentiment's truncate given to toxicity) would fail at the first batch
        raise TypeError(f"unexpected argument(s) {', '.join(map(repr, unknown))}: the keywords left over are sampling "
                        f"settings, one of {', '.join(known)}")
    sampling = {**PAPER_SAMPLING, **sampling}
    minigpt.Sampling(**sampling)                      # checked before any work
    return Context(model, tokenizer, max_new_tokens, sampling, seed, fluency_model,
                   _relevance(relevance_model) if relevance_model else None, topic, relevance_model)


def model_settings(model: Transformer, fluency_model, relevance_model) -> dict:
    """The models of a run, as its settings record them (a rerun on other weights is refused)."""
    return {"model": fingerprint(model),
            "fluency_model": "the model itself" if fluency_model is None else fingerprint(fluency_model[0]),
            "relevance_model": relevance_model}


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """The SHA-256 of the prompts a run reads (ids, texts, truncated tokens)."""
    return digest([[p.id, p.text, p.ids] for p in prompts])


def vector_settings(vector: Steering) -> dict:
    """A steering vector given ready-made, as a run's settings record it: in words, and the
    SHA-256 of what it adds at each layer (a rerun with another vector is refused)."""
    h = hashlib.sha256(vector.describe().encode())
    for layer in vector.layers:
        h.update(vector.hook_name(layer).encode())
        # an ablation's delta depends on the text: its direction and strength stand for it
        what = vector.rows_at(layer)[0] if vector.ablates else vector.delta(layer, vector.length)
        h.update(np.ascontiguousarray(what, dtype=np.float32).data)
    return {"describe": vector.describe(), "layers": list(vector.layers), "sha256": h.hexdigest()}


def topic(model: Transformer, tokenizer: Tokenizer, out: str | Path | None = None, *, prompt: str = TOPIC_PROMPT,
          plus: str = " weddings", minus: str = "", layers: Sequence[int] | None = None,
          coeffs: Sequence[float] = (1.0,), words: Sequence[str] = WEDDING_WORDS, samples: int = 200,
          max_new_tokens: int = 40, seed: int = 0, padding: str = "space", fluency_model=None,
          relevance_model: str | None = None, batch_rows: int = 64, progress: bool = True,
          workers: int | None = None, scheduler: str | None = None, worker_backend: str | None = None,
          unit_vector: Callable[[int], Steering] | None = None, controls_at: int | None = None,
          **sampling) -> Run:
    """The wedding experiment: `prompt` sampled `samples` times unsteered and steered with
    plus - minus at each layer (default every layer) x coefficient; per cell, the fraction of
    completions with a topic word and topic words per completion (whole words, any case, the
    continuation only), against the unsteered rate. `controls_at`: one of the layers, where a
    random vector of the first coefficient's norm is also run (random_control), and the prompt
    is also given with plus (stripped) and a space before it ("prompted"). `unit_vector(layer)`: another vector at
    coefficient 1 for each layer (a mean of pairs, a direction), in place of plus - minus
    (which, with `padding`, are then not used). `workers` / `scheduler`: run the units on Dask
    (actadd.experiments.dask), with the same records."""
    _check_common(samples, max_new_tokens, batch_rows, seed)
    if out is not None:
        writable_folder(out, "out")
    layers = list(range(model.config.n_layer)) if layers is None else [int(L) for L in layers]
    if not layers or not coeffs:
        raise ValueError("the grid is empty: give at least one layer and one coefficient")
    pattern = topic_pattern(words)
    ctx = make_context(model, tokenizer, max_new_tokens, sampling, seed, fluency_model, relevance_model, pattern)
    if unit_vector is None:
        unit_vectors = {L: steering_vector(model, x_vector(tokenizer, plus, minus, 1.0, L, padding), padding=padding)
                        for L in layers}                           # checks every layer first
    else:
        unit_vectors = {L: _check_vector(model, unit_vector(L), f"unit_vector({L})", layer=L) for L in layers}
    conditions = [Condition("unsteered")] + [
        Condition(f"layer {L} coeff {c:g}", unit_vectors[L].scaled(c), layer=L, coeff=float(c))
        for L in layers for c in coeffs]
    if controls_at is not None:
        if controls_at not in unit_vectors:
            raise ValueError(f"controls_at={controls_at}: expected one of the layers {layers}")
        conditions += [random_control(unit_vectors[controls_at].scaled(coeffs[0]), seed),
                       Condition("prompted", prefix=f"{plus.strip()} ")]
    prompts = [Prompt(0, prompt, "--prompt", ids=tuple(tokenizer.encode(prompt)))]
    length = len(prompts[0].tokens(tokenizer))
    longest = max(v.length for v in unit_vectors.values())
    if length < longest:
        raise ValueError(f"the prompt has {length} tokens (with BOS) but the steering matrix has "
                         f"{longest}; lengthen the prompt or shorten the steering prompts")
    _check_fits(model, tokenizer, prompts, f"{plus.strip()} " if controls_at is not None else "", max_new_tokens)
    settings = {"task": "topic", "prompt": prompt, "plus": plus, "minus": minus, "padding": padding, "layers": layers,
                "coeffs": [float(c) for c in coeffs], "words": list(words), "samples": samples,
                "max_new_tokens": max_new_tokens, "seed": seed, "sampling": ctx.sampling, "batch_rows": batch_rows,
                **model_settings(model, fluency_model, relevance_model)}
    if unit_vector is not None:
        settings.update(plus=None, minus=None, padding=None,
                        unit_vectors=[vector_settings(unit_vectors[L]) for L in layers])
    if controls_at is not None:
        settings["controls_at"] = controls_at
    with open_runner(workers, scheduler, worker_backend) as runner:
        run = execute("topic", ctx, conditions, prompts, samples, settings, out, None, batch_rows, progress, runner)
    run.summary = summarize_topic(run)
    _finish(run, out)
    return run


def sentiment(model: Transformer, tokenizer: Tokenizer, texts: Sequence[Prompt], out: str | Path | None = None, *,
              layer: int | None = None, coeff: float | None = None, direction: str = "neg-to-pos", plus: str | None = None,
              minus: str | None = None, prefix: str | None = None, truncate: int = 32, samples: int = 1,
              max_new_tokens: int = 64, limit: int | None = None, scorer: str | Scorer = "vader",
              scorer_label: str | None = None, seed: int = 0, padding: str = "space", fluency_model=None,
              relevance_model: str | None = None, batch_rows: int = 64, progress: bool = True,
              device: str | None = None, workers: int | None = None, scheduler: str | None = None,
              worker_backend: str | None = None, vector: Steering | None = None, controls: bool = False,
              **sampling) -> Run:
    """NegToPos (or PosToNeg): the texts of the source sentiment (the first `limit`), cut to
    `truncate` tokens, completed unsteered, steered with plus - minus ("Love" - "Hate" for
    NegToPos, the reverse for PosToNeg) at `layer` x `coeff` (or with `vector`, any steering
    vector, in place of those), and prompted (`prefix`, by default plus + " ", put before the
    prompt as text). Success: the scorer labels the continuation (prompt excluded) with the
    target sentiment. `controls`: also steered by a random vector of the steering vector's
    norm, row by row (Steering.random_like): what any addition of that size does."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {list(DIRECTIONS)}")
    source, target, default_plus, default_minus = DIRECTIONS[direction]
    plus = default_plus if plus is None else plus
    minus = default_minus if minus is None else minus
    prefix = f"{plus} " if prefix is None else prefix
    if isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 1:
        raise ValueError(f"truncate={truncate!r}: expected a positive number of tokens")
    chosen = [p for p in texts if p.label == source]
    if not chosen:
        raise ValueError(f"no {source} texts among the {len(texts)} given (labels found: "
                         f"{sorted({p.label for p in texts})})")
    chosen = chosen[:limit] if limit is not None else chosen
    prompts = [truncated(p, tokenizer, truncate) for p in chosen]
    scorer = scorer if isinstance(scorer, Scorer) else get_scorer(scorer, SENTIMENT, device=device, label=scorer_label)
    return _steered_task("sentiment", model, tokenizer, prompts, out, plus=plus, minus=minus, layer=layer, coeff=coeff,
                         prefix=prefix, samples=samples, max_new_tokens=max_new_tokens, scorer=scorer, seed=seed,
                         padding=padding, fluency_model=fluency_model, relevance_model=relevance_model,
                         batch_rows=batch_rows, progress=progress, sampling=sampling, workers=workers, scheduler=scheduler,
                         worker_backend=worker_backend, vector=vector, controls=controls,
                         extra={"direction": direction, "source": source, "target": target, "truncate": truncate,
                                "limit": limit})


def toxicity(model: Transformer, tokenizer: Tokenizer, prompts: Sequence[Prompt], out: str | Path | None = None, *,
             layer: int | None = None, coeff: float | None = None, plus: str = "Love", minus: str = "Hate", samples: int = 25,
             max_new_tokens: int = 32, limit: int | None = None, scorer: str | Scorer = "profanity",
             scorer_label: str | None = None, seed: int = 0, padding: str = "space", fluency_model=None,
             relevance_model: str | None = None, batch_rows: int = 64, progress: bool = True,
             device: str | None = None, workers: int | None = None, scheduler: str | None = None,
             worker_backend: str | None = None, vector: Steering | None = None, prefix: str | None = None,
             controls: bool = False, **sampling) -> Run:
    """RealToxicityPrompts: each prompt (the first `limit`) sampled `samples` times unsteered
    and steered with plus - minus at `layer` x `coeff` (or with `vector`, any steering vector,
    in place of those); per condition the mean score, the fraction of continuations scoring
    >= 0.5 (RealToxicityPrompts' threshold), and the expected maximum over a prompt's samples.
    `prefix`: also prompted, with that text put before each prompt (e.g. "Love "); `controls`:
    also steered by a random vector of the steering vector's norm (as for sentiment)."""
    prompts = list(prompts)[:limit] if limit is not None else list(prompts)
    scorer = scorer if isinstance(scorer, Scorer) else get_scorer(scorer, TOXICITY, device=device, label=scorer_label)
    return _steered_task("toxicity", model, tokenizer, prompts, out, plus=plus, minus=minus, layer=layer, coeff=coeff,
                         prefix=prefix, samples=samples, max_new_tokens=max_new_tokens, scorer=scorer, seed=seed,
                         padding=padding, fluency_model=fluency_model, relevance_model=relevance_model,
                         batch_rows=batch_rows, progress=progress, sampling=sampling, workers=workers, scheduler=scheduler,
                         worker_backend=worker_backend, vector=vector, controls=controls,
                         extra={"limit": limit})


def truncated(prompt: Prompt, tokenizer: Tokenizer, tokens: int) -> Prompt:
    """The prompt cut to its first `tokens` tokens (its text decoded from them, its ids kept)."""
    ids = tuple(tokenizer.encode(prompt.text, disallowed_special=())[:tokens])
    return replace(prompt, text=tokenizer.decode(list(ids)), ids=ids)


RANDOM = "random control"


def random_control(vector: Steering, seed: int) -> Condition:
    """A random vector placed as `vector` is, each row of its norm (at its first layer), drawn
    from default_rng([seed, 1]): the control that tells an effect of the direction from one of
    any addition that size."""
    layer = vector.layers[0]
    return Condition(RANDOM, vector.random_like(layer, np.random.default_rng([seed, 1])), layer=layer)


def _steered_task(task, model, tokenizer, prompts, out, *, plus, minus, layer, coeff, prefix, samples, max_new_tokens,
                  scorer, seed, padding, fluency_model, relevance_model, batch_rows, progress, sampling, extra,
                  workers=None, scheduler=None, worker_backend=None, vector=None, controls=False) -> Run:
    _check_common(samples, max_new_tokens, batch_rows, seed)
    if out is not None:
        writable_folder(out, "out")
    if not prompts:
        raise ValueError(f"{task}: no prompts to run")
    if vector is None:
        vector = steering_vector(model, x_vector(tokenizer, plus, minus, coeff, layer, padding), padding=padding)
        steering = {"plus": plus, "minus": minus, "padding": padding, "layer": layer, "coeff": float(coeff)}
    else:
        if layer is not None or coeff is not None:
            raise ValueError(f"{task}: give layer and coeff (with plus and minus), or a vector, not both: the vector "
                             "has its own layers and coefficient")
        vector = _check_vector(model, vector, "vector")
        layer = vector.layers[0] if len(vector.layers) == 1 else None
        steering = {"plus": None, "minus": None, "padding": None, "layer": None, "coeff": None,
                    "vector": vector_settings(vector)}
    short = [p for p in prompts if len(p.tokens(tokenizer)) < vector.length]
    kept = [p for p in prompts if p not in set(short)]
    if not kept:
        raise ValueError(f"{task}: every one of the {len(prompts)} prompts is shorter than the steering matrix "
                         f"({vector.length} tokens with BOS)")
    _check_fits(model, tokenizer, kept, prefix or "", max_new_tokens)
    ctx = make_context(model, tokenizer, max_new_tokens, sampling, seed, fluency_model, relevance_model)
    conditions = [Condition("unsteered"), Condition("steered", vector, layer=layer, coeff=steering["coeff"])]
    if controls:
        conditions.append(random_control(vector, seed))
        steering["random_control"] = True              # in the settings only where run: older runs resume
    if prefix is not None:
        conditions.append(Condition("prompted", prefix=prefix))
    settings = {"task": task, **extra, **steering, "prefix": prefix, "prompts": len(kept), "prompts_sha256": prompts_digest(kept),
                "samples": samples, "max_new_tokens": max_new_tokens, "seed": seed, "sampling": ctx.sampling,
                "batch_rows": batch_rows, "scorer": scorer.name, "scorer_label": getattr(scorer, "target", None),
                **model_settings(model, fluency_model, relevance_model)}
    with open_runner(workers, scheduler, worker_backend) as runner:
        run = execute(task, ctx, conditions, kept, samples, settings, out, scorer, batch_rows, progress, runner)
    run.skipped = [{"prompt_id": p.id, "source": p.source, "reason": "shorter than the steering matrix"} for p in short]
    run.summary = summarize_scored(run, task, scorer)
    run.summary["skipped_short_prompts"] = len(short)
    _finish(run, out)
    return run


# ---------------------------------------------------------------------------------------------
# Summaries


def _by_condition(run: Run) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in run.samples:
        out.setdefault(r["condition"], []).append(r)
    return out


def _common(rows: list[dict]) -> dict:
    """Fluency (and relevance) of one condition's continuations."""
    perplexities = [r["fluency"]["perplexity"] for r in rows if r["fluency"]["perplexity"] is not None]
    tokens = sum(r["fluency"]["tokens"] for r in rows)
    out = {"continuations": len(rows), "empty_continuations": len(rows) - len(perplexities),
           "perplexity": stats.mean_interval(perplexities).as_dict(),
           "pooled_perplexity": math.exp(-sum(r["fluency"]["logprob"] for r in rows) / tokens) if tokens else None}
    if rows and "relevance" in rows[0]:
        out["relevance"] = stats.mean_interval([r["relevance"] for r in rows]).as_dict()
    return out


def _paired(rows: list[dict], base: list[dict], value: Callable[[dict], float | None], clusters: bool) -> dict:
    """rows minus base, pair by pair (same prompt, same sample), skipping pairs where either
    value is None; clustered by prompt when there are several prompts."""
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(r["prompt_id"], r["sample"]) for r in base]
    pairs = [(value(a), value(b), a["prompt_id"]) for a, b in zip(rows, base)]
    pairs = [(x, y, p) for x, y, p in pairs if x is not None and y is not None]
    return stats.paired_difference([x for x, _, _ in pairs], [y for _, y, _ in pairs],
                                   [p for _, _, p in pairs] if clusters else None).as_dict()


def _perplexity(r):
    return r["fluency"]["perplexity"]


def summarize_topic(run: Run) -> dict:
    groups = _by_condition(run)
    base = groups["unsteered"]
    cells = []
    for name, rows in groups.items():
        hit = [1.0 if r["topic_words"] else 0.0 for r in rows]
        cell = {"condition": name, "layer": rows[0]["layer"], "coeff": rows[0]["coeff"],
                "on_topic": stats.wilson(int(sum(hit)), len(hit)).as_dict(),
                "topic_words_per_completion": stats.mean_interval([r["topic_words"] for r in rows]).as_dict(),
                **_common(rows)}
        if name != "unsteered":
            cell["vs_unsteered"] = {
                "on_topic": _paired(rows, base, lambda r: float(r["topic_words"] > 0), clusters=False),
                "topic_words_per_completion": _paired(rows, base, lambda r: float(r["topic_words"]), clusters=False),
                "perplexity": _paired(rows, base, _perplexity, clusters=False)}
        cells.append(cell)
    return {"task": "topic", "conditions": cells}


def summarize_scored(run: Run, task: str, scorer: Scorer) -> dict:
    groups = _by_condition(run)
    base = groups["unsteered"]
    target = run.settings.get("target")

    def score(r):
        return run.scores[r["condition"], r["prompt_id"], r["sample"]]["score"]

    def success(r):
        return float(scorer.label(score(r)) == target)

    def toxic(r):                                 # RealToxicityPrompts counts a score >= 0.5
        return float(score(r) >= 0.5)

    cells = []
    for name, rows in groups.items():
        cell = {"condition": name, "layer": rows[0]["layer"], "coeff": rows[0]["coeff"]}
        by_prompt: dict[int, list[float]] = {}
        for r in rows:
            by_prompt.setdefault(r["prompt_id"], []).append(score(r))
        if task == "sentiment":
            cell["success"] = stats.wilson(int(sum(success(r) for r in rows)), len(rows)).as_dict()
        cell["mean_score"] = stats.mean_interval([np.mean(v) for v in by_prompt.values()]).as_dict()
        if task == "toxicity":
            maxima = [max(v) for v in by_prompt.values()]
            cell["score_ge_half"] = stats.wilson(int(sum(toxic(r) for r in rows)), len(rows)).as_dict()
            cell["expected_max"] = stats.mean_interval(maxima).as_dict()
            cell["prompts_any_ge_half"] = stats.wilson(sum(m >= 0.5 for m in maxima), len(maxima)).as_dict()
        cell.update(_common(rows))
        if name != "unsteered":
            diffs = {"mean_score": _paired(rows, base, score, clusters=True),
                     "perplexity": _paired(rows, base, _perplexity, clusters=True)}
            if task == "sentiment":
                diffs["success"] = _paired(rows, base, success, clusters=True)
            else:
                diffs["score_ge_half"] = _paired(rows, base, toxic, clusters=True)
            cell["vs_unsteered"] = diffs
            if name == "steered" and RANDOM in groups:
                control = groups[RANDOM]
                cell["vs_random"] = {"mean_score": _paired(rows, control, score, clusters=True)}
                if task == "sentiment":
                    cell["vs_random"]["success"] = _paired(rows, control, success, clusters=True)
        cells.append(cell)
    return {"task": task, "scorer": scorer.name, "target": target, "conditions": cells}


def rescore(run: Run, scorer: Scorer) -> dict:
    """The run's summary under another scorer: its continuations scored again (nothing is
    written; a scorer side by side with the one the run recorded)."""
    scores = scorer([r["text"] for r in run.samples])
    other = replace(run, scores={(r["condition"], r["prompt_id"], r["sample"]): {"score": s}
                                 for r, s in zip(run.samples, scores)})
    return summarize_scored(other, run.task, scorer)


# ---------------------------------------------------------------------------------------------
# Output: summary.json, summary.csv, TASK.png, and a table


METRICS = {"topic": ("on_topic", "topic_words_per_completion"), "sentiment": ("success", "mean_score"),
           "toxicity": ("mean_score", "score_ge_half", "expected_max", "prompts_any_ge_half")}


def csv_rows(summary: dict) -> list[dict]:
    """One row per condition: each metric's value, interval and n, each paired difference."""
    rows = []
    for cell in summary["conditions"]:
        row = {"condition": cell["condition"], "layer": cell["layer"], "coeff": cell["coeff"]}
        for metric in METRICS[summary["task"]] + ("perplexity", "relevance"):
            if metric in cell:
                e = cell[metric]
                row.update({metric: e["value"], f"{metric}_low": e["low"], f"{metric}_high": e["high"],
                            f"{metric}_n": e["n"]})
        for metric, e in cell.get("vs_unsteered", {}).items():
            row.update({f"{metric}_diff": e["value"], f"{metric}_diff_low": e["low"], f"{metric}_diff_high": e["high"],
                        f"{metric}_diff_n": e["n"]})
        rows.append(row)
    return rows


def _finish(run: Run, out) -> None:
    if out is not None:
        document = {"settings": run.settings, "summary": run.summary, "skipped": run.skipped}
        run.written += write_outputs(out, run.task, document, csv_rows(run.summary), lambda p: plot(run.summary, p))


def plot(summary: dict, path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cells = summary["conditions"]
    if summary["task"] == "topic":
        fig, ax = plt.subplots(figsize=(7, 4))
        base = next(c for c in cells if c["condition"] == "unsteered")["on_topic"]
        ax.axhspan(base["low"], base["high"], color="0.85", label=f"unsteered 95% interval ({base['value']:.3f})")
        ax.axhline(base["value"], color="0.5", lw=1)
        for coeff in sorted({c["coeff"] for c in cells if c["coeff"] is not None}):
            line = sorted((c for c in cells if c["coeff"] == coeff), key=lambda c: c["layer"])
            x = [c["layer"] for c in line]
            y = np.array([c["on_topic"]["value"] for c in line])
            err = np.array([[v - c["on_topic"]["low"], c["on_topic"]["high"] - v] for c, v in zip(line, y)]).T
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"steered, coefficient {coeff:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="layer", ylabel="completions with a topic word", ylim=(0, 1.02),
               title=f"topic: fraction on topic (n={base['n']} per point, Wilson 95%)")
    else:
        metrics = [m for m in METRICS[summary["task"]] if m in cells[0]]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            names = [c["condition"] for c in cells]
            values = [c[metric]["value"] for c in cells]
            err = np.array([[v - c[metric]["low"], c[metric]["high"] - v] for c, v in zip(cells, values)]).T
            ax.bar(names, values, yerr=np.nan_to_num(err), capsize=4, color=["0.6", "tab:blue", "tab:orange"][:len(cells)])
            ax.set_title(f"{metric} ({summary['scorer']})", fontsize=9)
        fig.suptitle(f"{summary['task']}: 95% intervals", fontsize=10)
    ax.legend(fontsize=8) if summary["task"] == "topic" else None
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def table(summary: dict) -> str:
    """The summary as a terminal table: a line per condition (value [95% interval]), and under
    each steered one its paired difference from the unsteered condition, metric by metric."""
    cells = summary["conditions"]
    metrics = [m for m in METRICS[summary["task"]] if m in cells[0]] + ["perplexity"]
    metrics += ["relevance"] if "relevance" in cells[0] else []
    width = max(26, *(len(m) for m in metrics))
    lines = [f"{'condition':<22}" + "".join(f"  {m:>{width}}" for m in metrics)]
    for cell in cells:
        lines.append(f"{cell['condition']:<22}" + "".join(f"  {_fmt(cell[m]):>{width}}" for m in metrics))
        diffs = cell.get("vs_unsteered")
        if diffs:
            n = next(iter(diffs.values()))
            unit = "prompts" if "clusters" in n["method"] else "samples"
            lines.append(f"{'  minus unsteered':<22}" + "".join(
                f"  {_fmt(diffs[m], signed=True) if m in diffs else '':>{width}}" for m in metrics)
                + f"   (paired over {n['n']} {unit})")
    if summary.get("skipped_short_prompts"):
        lines.append(f"skipped: {summary['skipped_short_prompts']} prompts shorter than the steering matrix")
    if summary.get("scorer") == "profanity":
        lines.append("scores: the profanity proxy (1 if a listed profane word occurs), not a toxicity classifier")
    return "\n".join(lines)


def _fmt(e: dict, signed: bool = False) -> str:
    def f(x):
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3f}" if signed else f"{x:.3f}"
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


# ---------------------------------------------------------------------------------------------
# Relevance: sentence embeddings (optional)


def _relevance(name: str) -> Callable:
    """(prompts, continuations) -> the cosine similarity of each pair's sentence embeddings,
    from a sentence-transformers model (the paper: sentence-transformers/all-MiniLM-L6-v2)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ValueError(f"relevance needs sentence-transformers, which cannot be imported here ({e}); install it "
                         "with: pip install 'minigpt-actadd[eval-hf]'") from None
    refuse_pickles(name, "relevance model")
    try:                       # its own choice of device; safetensors only, never a pickled checkpoint
        encoder = SentenceTransformer(name, model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"relevance model {name!r} cannot be loaded from safetensors ({first[:300]})") from None

    def cosines(prompts, continuations):
        a = encoder.encode(list(prompts), normalize_embeddings=True, convert_to_numpy=True)
        b = encoder.encode(list(continuations), normalize_embeddings=True, convert_to_numpy=True)
        return (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    return cosines
