"""Checkpoints shipped with minigpt. Installed as the package `minigpt.checkpoints` (pyproject maps
it to this folder), so an installed copy finds them as a checkout does: `minigpt.load("tiny-books")`.
"""

import re
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SHIPPED = {"tiny-books": FOLDER / "tiny-books", "tiny-imdb": FOLDER / "tiny-imdb"}  # short name -> HF folder

HELD_OUT = 0.05  # the end of each training text that tiny-books never saw


def split_held_out(text: str) -> tuple[str, str]:
    """(training part, held-out part) of a text, as scripts/train_tiny.py splits each book: the
    held-out part is the last 5%, from a line break on."""
    cut = text.rindex("\n", 0, int(len(text) * (1 - HELD_OUT))) + 1
    return text[:cut], text[cut:]


def held_out_chunks(tokenizer, path, n: int = 64, count: int = 40) -> list[tuple[str, list[int]]]:
    """`count` chunks of `n` tokens, each with <|endoftext|> first, from the held-out end of a book
    file (grouped under its file name): text to measure tiny-books on that it was not trained on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such book file (the Project Gutenberg books tiny-books was trained on; "
                                "docs/data.md says where to get them, and MINIGPT_CORPORA where they are)")
    ids = tokenizer.encode(split_held_out(path.read_text(encoding="utf-8"))[1], disallowed_special=())
    if len(ids) < n * count:
        raise ValueError(f"{path}: the held-out part has {len(ids)} tokens, fewer than {count} chunks of {n}")
    return [(path.name, [tokenizer.bos_token_id] + ids[i:i + n]) for i in range(0, n * count, n)]


IMDB_DEV = 20  # every 20th labelled IMDb training review is tiny-imdb's dev split


def imdb_dev(review_id: str) -> bool:
    """Whether an IMDb review (id "train/neg/120", as in corpora/imdb) is in the dev split that
    tiny-imdb and the imdb classifier never saw: the labelled training reviews whose number is a
    multiple of 20 (982 of 19,683: 492 negative, 490 positive). Their validation perplexity is
    the model card's, and the steering setting is chosen on them, never on the test reviews."""
    split, label, number = review_id.split("/")
    return split == "train" and label in ("neg", "pos") and int(number) % IMDB_DEV == 0


def davidson_split(tweet_id: int) -> str:
    """Which split of the Davidson et al. (2017) tweets (corpora/davidson_hate_offensive, field
    "id") a tweet is in for the shipped toxicity classifier: "test" for ids ending in 0 (never
    fitted, only scored for the card), "dev" for ids ending in 5 (chose the regularisation),
    "fit" for the rest."""
    return {0: "test", 5: "dev"}.get(tweet_id % 10, "fit")


def tweet_text(tweet: str) -> str:
    """A tweet as the toxicity classifier is fitted on it: what a model's continuation never
    holds taken out (retweet marks, @handles, links, HTML entities), spaces collapsed."""
    tweet = re.sub(r"(?<!\w)RT\b|@\w+:?|https?://\S+|&#\d+;", " ", tweet)
    tweet = tweet.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    return re.sub(r"\s+", " ", tweet).strip()
