"""Train the small GPT-2 shipped in weights/tiny-books: a byte-level BPE tokenizer and a 4-layer
GPT-2 on public-domain books, with a fixed seed, written as a standard Hugging Face folder.

    python scripts/train_tiny.py --corpora ../shared/corpora --out weights/tiny-books [--steps 3000]

Training-only dependencies (the test extra): torch, transformers' GPT2LMHeadModel, tokenizers.
minigpt itself never needs them to load or run the result.

Data: the ten Gutenberg books in corpora/gutenberg and tinyshakespeare (public domain). Each text's last 5% (cut at a line break) is held out for validation. Documents
are joined with <|endoftext|>, as GPT-2's training data was.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from minigpt.checkpoints import split_held_out  # one rule for training, tests and docs

EOT = "<|endoftext|>"
TITLES = {"pg11": "Alice's Adventures in Wonderland", "pg1342": "Pride and Prejudice", "pg16": "Peter Pan",
          "pg1661": "The Adventures of Sherlock Holmes", "pg174": "The Picture of Dorian Gray",
          "pg236": "The Jungle Book", "pg2701": "Moby Dick", "pg345": "Dracula", "pg5200": "Metamorphosis",
          "pg98": "A Tale of Two Cities"}
ARCH = dict(n_layer=4, n_head=4, n_embd=256, n_positions=256)
VOCAB = 4096


def read_texts(corpora: Path) -> dict[str, str]:
    """Each book by its file name (the corpora hold the books' bodies, without Gutenberg's
    licence header and footer; see corpora/SOURCES.md)."""
    texts = {p.stem: p.read_text(encoding="utf-8") for p in sorted((corpora / "gutenberg").glob("*.txt"))}
    texts["tinyshakespeare"] = (corpora / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return texts


def train_tokenizer(train_texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's pattern and byte alphabet
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_texts, trainer)
    return tok


def stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Token ids of the texts, each preceded by <|endoftext|>."""
    eot = tok.token_to_id(EOT)
    ids = []
    for text in texts:
        ids.append(eot)
        ids.extend(tok.encode(text).ids)
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
license: cc0-1.0
language: en
library_name: minigpt
tags: [gpt2, activation-addition, steering, teaching]
---

# tiny-books: a small GPT-2 for teaching ActAdd offline

A GPT-2-architecture model ({parameters:,} parameters) trained from scratch by
`scripts/train_tiny.py` on public-domain books, shipped with minigpt so that steering can be
shown without network. It is a toy: it writes locally plausible Victorian English and forgets
what it was saying within a sentence. Load it with `minigpt.load("tiny-books")` or
`--model tiny-books`; it is a standard Hugging Face folder, so `transformers` loads it too.

## Architecture

GPT-2 ({n_layer} layers, {n_head} heads, width {n_embd}, MLP {n_inner}, context {context}, tied
embeddings, `gelu_new`), byte-level BPE tokenizer of {vocab:,} tokens trained on the same
training text with GPT-2's pre-tokenisation; `<|endoftext|>` is id {eot}. Stored in float16
(`model.safetensors`, {file_mb:.1f} MB); minigpt widens to float32 on load.

## Data and licences

The ten Project Gutenberg books in the shared corpora ({books}) and tinyshakespeare: all in the
public domain. Each text's last 5% (from a line break) is held out for validation; documents are
joined with `<|endoftext|>`. Training text: {train_tokens:,} tokens; validation: {validation_tokens:,}.
The weights are released under CC0.

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

STEERING = """Measured on this checkpoint (seed 0 training run) by tests/test_tiny_books.py and
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


def write_card(folder: Path, stats: dict) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "README.md").write_text(CARD.format(
        **{**stats, "books": "; ".join(f"{TITLES.get(b, b)} ({b})" for b in stats["books"][:-1])}, **{k: config[k] for k in ("n_layer", "n_head", "n_embd")},
        n_inner=config.get("n_inner") or 4 * config["n_embd"], vocab=config["vocab_size"], eot=config["eos_token_id"],
        file_mb=(folder / "model.safetensors").stat().st_size / 1e6,
        epochs=stats["tokens_seen"] / stats["train_tokens"], minutes=stats["train_seconds"] / 60,
        last_loss=stats["log"][-1]["loss"], steering=STEERING.strip()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from training.json")
    args = parser.parse_args()
    if not args.card_only and args.corpora is None:
        parser.error("--corpora is needed to train (only --card-only works without it)")
    if args.card_only:
        return write_card(args.out, json.loads((args.out / "training.json").read_text()))
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    texts = read_texts(args.corpora)
    train_texts, val_texts = zip(*(split_held_out(t) for t in texts.values()))
    tok = train_tokenizer(list(train_texts))
    train_ids, val_ids = stream(tok, train_texts), stream(tok, val_texts)
    ctx = ARCH["n_positions"]
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_ids):,} tokens, validation {len(val_ids):,}")

    eot = tok.token_to_id(EOT)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ARCH)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 30)

    def lr_at(step):  # linear warm-up, then cosine down to a tenth
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))))

    log = []
    model.train()
    for step in range(args.steps):
        starts = rng.integers(0, len(train_ids) - ctx, args.batch)
        x = torch.as_tensor(np.stack([train_ids[s:s + ctx] for s in starts]))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - started})
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - started:7.0f} s", flush=True)
    train_seconds = time.perf_counter() - started

    model.eval()
    val_loss = mean_loss(model, val_ids, ctx)
    print(f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.2f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out)  # model.safetensors (float16) and config.json
    tok.model.save(str(args.out))          # vocab.json and merges.txt, GPT-2's file format
    stats = {"seed": args.seed, "steps": args.steps, "batch": args.batch, "context": ctx, "lr": args.lr,
             "train_tokens": int(len(train_ids)), "validation_tokens": int(len(val_ids)),
             "tokens_seen": args.steps * args.batch * ctx, "validation_loss": val_loss,
             "validation_perplexity": math.exp(val_loss), "train_seconds": train_seconds,
             "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
             "parameters": sum(p.numel() for p in model.parameters()), "books": list(texts), "log": log}
    (args.out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(args.out, stats)
    print(f"wrote {args.out} in {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
