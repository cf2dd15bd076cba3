"""Train a small GPT-2 shipped in weights/: a byte-level BPE tokenizer and a GPT-2 trained from
scratch on one of the shared corpora, with a fixed seed, written as a standard Hugging Face folder
with its model card.

    python scripts/train_tiny.py --corpus books --corpora ../shared/corpora --out weights/tiny-books
    python scripts/train_tiny.py --corpus imdb --corpora ../shared/corpora --out weights/tiny-imdb
    python scripts/train_tiny.py --corpus imdb --corpora ../shared/corpora --dev-out DIR   # the dev split

Training-only dependencies (the test extra): torch, transformers' GPT2LMHeadModel, tokenizers.
minigpt itself never needs them to load or run the result.

Data, per corpus (each corpus has its own architecture, steps and model card; the loop is one):
- books (tiny-books): the ten Gutenberg books in corpora/gutenberg and tinyshakespeare (public
  domain). Each text's last 5% (cut at a line break) is held out for validation.
- imdb (tiny-imdb): the Large Movie Review Dataset's training and unlabelled reviews (never its
  test reviews: they are the evaluation's prompts), `<br />` tags made line breaks. The dev split
  (minigpt.checkpoints.imdb_dev: every 20th labelled training review) is held out for validation
  and for choosing a steering setting; --dev-out writes it for `actadd sweep` and `actadd eval`.
Documents are joined with <|endoftext|>, as GPT-2's training data was.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from actadd.experiments.data import line_breaks
from minigpt.checkpoints import imdb_dev, split_held_out  # one rule each for training, tests and docs

EOT = "<|endoftext|>"
TITLES = {"pg11": "Alice's Adventures in Wonderland", "pg1342": "Pride and Prejudice", "pg16": "Peter Pan",
          "pg1661": "The Adventures of Sherlock Holmes", "pg174": "The Picture of Dorian Gray",
          "pg236": "The Jungle Book", "pg2701": "Moby Dick", "pg345": "Dracula", "pg5200": "Metamorphosis",
          "pg98": "A Tale of Two Cities"}


def read_books(corpora: Path) -> tuple[list[str], list[str], dict]:
    """Each book (the corpora hold the books' bodies, without Gutenberg's licence header and
    footer; see corpora/SOURCES.md), split into its training part and its held-out end."""
    texts = {p.stem: p.read_text(encoding="utf-8") for p in sorted((corpora / "gutenberg").glob("*.txt"))}
    texts["tinyshakespeare"] = (corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    train, held_out = zip(*(split_held_out(t) for t in texts.values()))
    return list(train), list(held_out), {"books": list(texts)}


def imdb_reviews(corpora: Path, name: str) -> list[dict]:
    with open(corpora / "imdb" / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_imdb(corpora: Path) -> tuple[list[str], list[str], dict]:
    """The labelled training reviews outside the dev split, then the unlabelled ones; the dev
    split for validation. The test reviews are never read."""
    labelled, unlabelled = imdb_reviews(corpora, "train"), imdb_reviews(corpora, "unsup")
    dev = [r for r in labelled if imdb_dev(r["id"])]
    train = [r for r in labelled if not imdb_dev(r["id"])] + unlabelled
    counts = {"labelled_train": len(labelled) - len(dev), "unlabelled": len(unlabelled), "dev": len(dev)}
    return [line_breaks(r["text"]) for r in train], [line_breaks(r["text"]) for r in dev], counts


def write_dev(corpora: Path, out: Path) -> None:
    """The dev split as actadd's commands read it: OUT/dev.jsonl (the corpus's own lines, for
    `actadd eval sentiment --html-breaks`) and OUT/negative.txt, OUT/positive.txt (one review a
    line, line breaks made spaces, for `actadd sweep --split lines`)."""
    dev = [r for r in imdb_reviews(corpora, "train") if imdb_dev(r["id"])]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev), encoding="utf-8")
    for label, name in (("neg", "negative"), ("pos", "positive")):
        flat = [" ".join(line_breaks(r["text"]).split()) for r in dev if r["label"] == label]
        (out / f"{name}.txt").write_text("".join(t + "\n" for t in flat), encoding="utf-8")
    print(f"wrote {out}/dev.jsonl, negative.txt, positive.txt ({len(dev)} reviews)")


def train_tokenizer(train_texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's pattern and byte alphabet
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_texts, trainer)
    return tok


def stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Token ids of the texts, each preceded by <|endoftext|>."""
    eot = tok.token_to_id(EOT)
    ids = []
    for encoding in tok.encode_batch(list(texts)):
        ids.append(eot)
        ids.extend(encoding.ids)
    return np.array(ids, dtype=np.int64)


@torch.no_grad()
def mean_loss(model, ids: np.ndarray, ctx: int, batch: int = 32) -> float:
    """Mean next-token loss over non-overlapping windows of ctx tokens."""
    windows = torch.as_tensor(ids[:len(ids) // ctx * ctx].reshape(-1, ctx))
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch]
        total += model(x, labels=x).loss.item() * x.numel()
        count += x.numel()
    return total / count


CARD = """---
license: {license}
language: en
library_name: minigpt
tags: [gpt2, activation-addition, steering, teaching]
---

# {name}: {title}

A GPT-2-architecture model ({parameters:,} parameters) trained from scratch by
`scripts/train_tiny.py --corpus {corpus}` on {trained_on}, shipped with minigpt so that steering can be
shown without network. {character} Load it with `minigpt.load("{name}")` or
`--model {name}`; it is a standard Hugging Face folder, so `transformers` loads it too.

## Architecture

GPT-2 ({n_layer} layers, {n_head} heads, width {n_embd}, MLP {n_inner}, context {context}, tied
embeddings, `gelu_new`), byte-level BPE tokenizer of {vocab:,} tokens trained on the same
training text with GPT-2's pre-tokenisation; `<|endoftext|>` is id {eot}. Stored in float16
(`model.safetensors`, {file_mb:.1f} MB); minigpt widens to float32 on load.

## Data and licences

{data}

## Training

AdamW (betas 0.9, 0.95, weight decay 0.1), peak learning rate {lr}, linear warm-up then cosine
to a tenth, gradient clipping at 1, batch {batch} x {context} tokens, {steps:,} steps
({tokens_seen:,} tokens, {epochs:.1f} passes over the training text), no dropout, seed {seed},
torch {torch} on {threads} CPU threads: {minutes:.1f} minutes.

| | |
|---|---|
| validation loss | {validation_loss:.3f} nats/token |
| validation perplexity | {validation_perplexity:.1f} |
| last training-batch loss | {last_loss:.3f} |

## Steering

{steering}
"""

BOOKS_DATA = """The ten Project Gutenberg books in the shared corpora ({books}) and tinyshakespeare: all in the
public domain. Each text's last 5% (from a line break) is held out for validation; documents are
joined with `<|endoftext|>`. Training text: {train_tokens:,} tokens; validation: {validation_tokens:,}.
The weights are released under CC0."""

IMDB_DATA = """The Large Movie Review Dataset v1.0 (Andrew L. Maas, Raymond E. Daly, Peter T. Pham, Dan Huang,
Andrew Y. Ng and Christopher Potts, "Learning Word Vectors for Sentiment Analysis", ACL 2011),
as in the shared corpora (about four fifths of the original): {labelled_train:,} labelled
training reviews and {unlabelled:,} unlabelled ones; the {dev:,} labelled training reviews whose
number is a multiple of 20 (`minigpt.checkpoints.imdb_dev`) are held out for validation and for
choosing steering settings, and the test reviews are never read (they are the evaluation's
prompts). `<br />` tags are made line breaks; reviews are joined with `<|endoftext|>`. Training
text: {train_tokens:,} tokens; validation: {validation_tokens:,}. The reviews are IMDb users'
words, released by the data set's authors for research: cite Maas et al. 2011 wherever this
model is used. The weights are released for research and teaching on the same terms."""

BOOKS_STEERING = """Measured on this checkpoint (seed 0 training run) by tests/test_tiny_books.py and
docs/walkthrough.md, with the x-vector `"whale" - ""` (space-padded, front, layer 0):

- **Completions change visibly.** At coefficient 4, after "In the morning we", sampled as in
  the paper (temperature 1, top-p 0.3, frequency penalty 1) from seeds 0-9, 10 completions of
  40 tokens each: 0.02 sea words (whale, sea, ship, captain, ...) per completion unsteered,
  1.05 steered. The seed-to-seed standard error of the difference is 0.17.
- **Held-out text on the topic becomes likelier, but only with a gentle push.** At coefficient
  1 the mean log-prob of held-out Moby Dick rises by 0.031 nats/token (standard error 0.0044
  over 40 chunks of 64 tokens; ten control words at the same setting move it by -0.009 to
  +0.010), while Pride and Prejudice falls by 0.040.
- **What it does not do.** At coefficient 4 both books' log-probs fall (Moby Dick -0.017,
  Pride and Prejudice -0.155): the push that makes it write about whales also disrupts its
  predictions. At layers 1-3 every coefficient tried (1-8) lowers Moby Dick's log-prob
  (perplexity ratio 1.02-3.7). The model has four layers and a 4,096-token vocabulary; it knows
  whales as words that co-occur with ships and captains, not as a topic it can hold over a
  paragraph. Results on GPT-2 proper (the paper's) need the real checkpoints.

The weights are a toy for teaching and testing. Do not read anything about large models from
them."""


IMDB_STEERING = """Measured on this checkpoint (seed 0 training run) with `actadd eval sentiment --scorer imdb`
(the TF-IDF classifier shipped beside it, `imdb-sentiment/`), the whole search and its tables in
docs/sentiment.md. On the first 1,000 IMDb test reviews of each sentiment, cut to 32 tokens, 32
new tokens sampled as in the paper (temperature 1, top-p 0.3, frequency penalty 1, seed 0):

- **The claim holds with a descriptive pair.** `"This movie is wonderful, great and beautiful" -
  "This movie is terrible, awful and boring"` at layer 1, coefficient 16 (chosen on the dev
  split): NegToPos success 0.438 -> 0.629, paired difference +0.191 [+0.151, +0.231], perplexity
  10.41 -> 12.06 (1.16x); PosToNeg (the pair reversed) 0.509 -> 0.616, +0.107 [+0.066, +0.148],
  perplexity 0.99x. VADER on the same continuations agrees in direction (+0.057, +0.044).
- **Not with "Love" - "Hate".** At its best dev setting (layer 3 x 4): +0.001 [-0.035, +0.037]
  and -0.013 [-0.051, +0.025]. "Love" is two tokens in this vocabulary, and what is added at
  the first two positions of a 32-token prompt barely reaches the continuation of a 6-layer
  model.
- **Unsteered, continuations barely follow their prompt's sentiment** (0.438 of the negatives'
  are called positive), unlike a large model's; and each label is noisy (the classifier is right
  on 0.727 of real continuation windows). Effects show in paired differences over hundreds of
  prompts, not in a handful of samples.

The weights are a toy for teaching and testing. Do not read anything about large models from
them."""


@dataclass(frozen=True)
class Corpus:
    """What differs between the shipped models: the data, the shape, the schedule and the card."""

    read: Callable[[Path], tuple[list[str], list[str], dict]]   # corpora -> (train, validation, facts)
    arch: dict
    vocab: int
    steps: int
    batch: int
    card: dict                                                  # the card's words for this model


CORPORA = {
    "books": Corpus(read_books, dict(n_layer=4, n_head=4, n_embd=256, n_positions=256), vocab=4096, steps=1800,
                    batch=16, card=dict(
                        name="tiny-books", license="cc0-1.0", title="a small GPT-2 for teaching ActAdd offline",
                        trained_on="public-domain books",
                        character="It is a toy: it writes locally plausible Victorian English and forgets\n"
                                  "what it was saying within a sentence.",
                        data=BOOKS_DATA, steering=BOOKS_STEERING)),
    # Six layers so that a middle layer exists to steer at; context 128 (prompts of 32 tokens and
    # continuations of 32-64 are what it is for) buys more tokens in the hour than 256 would.
    "imdb": Corpus(read_imdb, dict(n_layer=6, n_head=6, n_embd=384, n_positions=128), vocab=4096, steps=2000,
                   batch=32, card=dict(
                       name="tiny-imdb", license="other", title="a small GPT-2 of movie reviews, to check ActAdd's "
                       "sentiment claim offline", trained_on="IMDb movie reviews",
                       character="It writes review-like English, dense in opinion, and loses the thread\n"
                                 "within a few sentences.",
                       data=IMDB_DATA, steering=IMDB_STEERING)),
}


def write_card(folder: Path, stats: dict) -> None:
    config = json.loads((folder / "config.json").read_text())
    card = CORPORA[stats.get("corpus", "books")].card
    facts = {"corpus": "books", **stats, **stats.get("data", {})}
    if "books" in facts:
        facts["books"] = "; ".join(f"{TITLES.get(b, b)} ({b})" for b in facts["books"][:-1])
    (folder / "README.md").write_text(CARD.format(
        **{**facts, **card, "data": card["data"].format(**facts), "steering": card["steering"].strip()},
        **{k: config[k] for k in ("n_layer", "n_head", "n_embd")},
        n_inner=config.get("n_inner") or 4 * config["n_embd"], vocab=config["vocab_size"], eot=config["eos_token_id"],
        file_mb=(folder / "model.safetensors").stat().st_size / 1e6,
        epochs=stats["tokens_seen"] / stats["train_tokens"], minutes=stats["train_seconds"] / 60,
        last_loss=stats["log"][-1]["loss"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="books")
    parser.add_argument("--corpora", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, help="default: the corpus's (books 1800, imdb 2000)")
    parser.add_argument("--batch", type=int, help="default: the corpus's (books 16, imdb 32)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from training.json")
    parser.add_argument("--dev-out", type=Path, help="imdb: write the dev split to this folder and stop")
    args = parser.parse_args()
    if args.dev_out is not None:
        if args.corpus != "imdb" or args.corpora is None:
            parser.error("--dev-out needs --corpus imdb and --corpora")
        return write_dev(args.corpora, args.dev_out)
    if args.out is None:
        parser.error("--out is needed (the model's folder)")
    if not args.card_only and args.corpora is None:
        parser.error("--corpora is needed to train (only --card-only works without it)")
    if args.card_only:
        return write_card(args.out, json.loads((args.out / "training.json").read_text()))
    corpus = CORPORA[args.corpus]
    steps, batch = args.steps or corpus.steps, args.batch or corpus.batch
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    train_texts, val_texts, data = corpus.read(args.corpora)
    tok = train_tokenizer(train_texts, corpus.vocab)
    train_ids, val_ids = stream(tok, train_texts), stream(tok, val_texts)
    ctx = corpus.arch["n_positions"]
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_ids):,} tokens, validation {len(val_ids):,}")

    eot = tok.token_to_id(EOT)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **corpus.arch)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 30)

    def lr_at(step):  # linear warm-up, then cosine down to a tenth
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    log = []
    model.train()
    for step in range(steps):
        starts = rng.integers(0, len(train_ids) - ctx, batch)
        x = torch.as_tensor(np.stack([train_ids[s:s + ctx] for s in starts]))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - started})
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - started:7.0f} s", flush=True)
    train_seconds = time.perf_counter() - started

    model.eval()
    val_loss = mean_loss(model, val_ids, ctx)
    print(f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.2f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)  # model.safetensors (float16) and config.json
    tok.model.save(str(args.out))          # vocab.json and merges.txt, GPT-2's file format
    stats = {"corpus": args.corpus, "seed": args.seed, "steps": steps, "batch": batch, "context": ctx, "lr": args.lr,
             "train_tokens": int(len(train_ids)), "validation_tokens": int(len(val_ids)),
             "tokens_seen": steps * batch * ctx, "validation_loss": val_loss,
             "validation_perplexity": math.exp(val_loss), "train_seconds": train_seconds,
             "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
             "parameters": sum(p.numel() for p in model.parameters()), "data": data, "log": log}
    (args.out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(args.out, stats)
    print(f"wrote {args.out} in {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
