"""Train the offline sentiment classifier shipped in weights/imdb-sentiment (`--scorer imdb`): a
TF-IDF logistic regression on IMDb training reviews, exported as plain arrays that
actadd.experiments.scorers.TfidfLogistic scores in NumPy alone.

    python scripts/train_imdb_classifier.py --corpora ../shared/corpora --out weights/imdb-sentiment

Training-only dependencies (the test extra): scikit-learn, and vaderSentiment for the agreement.

It must judge short continuations, not only whole reviews: a classifier fitted on whole reviews
calls most short windows of a negative review positive, because whole reviews' features are
dense and a window's are few. So each training review is cut into consecutive windows of
--window words (about the 32 tokens of a continuation), each labelled with its review's label,
and the whole review is kept too. The regularisation C is chosen on the dev split
(minigpt.checkpoints.imdb_dev, never used to fit), by the log-loss on its windows; the test
reviews are only ever scored, at the end, for the card.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from actadd.experiments.data import line_breaks
from actadd.experiments.scorers import TfidfLogistic, Vader, export_tfidf
from actadd.experiments.stats import accuracy, wilson
from minigpt.checkpoints import imdb_dev

CS = (0.5, 1.0, 2.0, 4.0, 8.0)

CARD = """---
license: other
language: en
library_name: actadd
tags: [sentiment, tf-idf, logistic-regression, imdb]
---

# imdb-sentiment: an offline sentiment classifier for `actadd eval sentiment --scorer imdb`

A logistic regression over TF-IDF word unigrams and bigrams ({features:,} features, 1 + log tf,
l2-normalised rows, C = {C}), fitted with scikit-learn {sklearn} by
`scripts/train_imdb_classifier.py` and stored as plain float64 arrays in
`classifier.safetensors` (the terms in its metadata). actadd scores it in NumPy alone
(`actadd.experiments.scorers.TfidfLogistic`), equal to scikit-learn's `predict_proba` to
float64 rounding (tests/test_scorers.py). The score is the probability that a text is positive;
the label is positive at 0.5 and above.

## Data

The Large Movie Review Dataset v1.0 (Maas et al., "Learning Word Vectors for Sentiment
Analysis", ACL 2011; cite it wherever this classifier is used), as in the shared corpora:
{fit_reviews:,} labelled training reviews, `<br />` tags made line breaks. The {dev_reviews:,}
reviews of the dev split (`minigpt.checkpoints.imdb_dev`) chose C and were never fitted; the
{test_reviews:,} test reviews were only scored, for this card.

It must judge short continuations of 32 tokens, not whole reviews, so each training review is
cut into consecutive windows of {window_words} words (about a continuation's length), each labelled
with its review's label, and kept whole as well: {fit_texts:,} training texts.

## Accuracy (95% Wilson intervals)

| texts | accuracy | n |
|---|---|---|
| whole test reviews | {test_whole} | {test_reviews:,} |
| a {window_words}-word window of each test review (words {window_words1}-{window_words2}, where a continuation stands) | {test_windows} | {test_reviews:,} |
| whole dev reviews | {dev_whole} | {dev_reviews:,} |
| every {window_words}-word window of the dev reviews | {dev_windows} | {dev_window_count:,} |

A window of a review is not always of its review's sentiment (plot summary, a good scene in a
bad film), so window accuracy has a ceiling well below 100%. Of the negative reviews' windows
{neg_called_pos} are called positive.

**Agreement with VADER** on the same test windows: VADER is neutral on {vader_neutral}; where it
decides, the two agree on {agreement}, and VADER's own accuracy there is {vader_accuracy} (this
classifier's, on all windows: {test_windows}).

## Limits

A bag of words and word pairs: it does not read negation beyond a bigram ("not good" is a
feature; "not at all good" is not), sarcasm or which film a sentence is about. It is trained on
movie reviews; on other text its scores mean little. It judges the sentiment of text, not its
quality: gibberish made of positive words scores positive, so a steering result must be read
with its perplexity.
"""


def reviews(corpora: Path, name: str) -> list[tuple[str, int]]:
    """(text with <br /> made line breaks, 1 if positive) of each labelled review in the file."""
    with open(corpora / "imdb" / f"{name}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(line_breaks(r["text"]), int(r["label"] == "pos"), r["id"]) for r in rows if r["label"] in ("neg", "pos")]


def windows(text: str, size: int) -> list[str]:
    """Consecutive windows of `size` words; a last one of fewer than half that is dropped."""
    words = text.split()
    cuts = [words[i:i + size] for i in range(0, len(words), size)]
    return [" ".join(w) for w in cuts if len(w) >= size // 2 or len(cuts) == 1]


def continuation_window(text: str, size: int) -> str:
    """The `size` words after a review's first `size`: where a continuation of a prompt cut from
    the review's start would stand."""
    words = text.split()
    return " ".join(words[size:2 * size]) if len(words) > size + size // 2 else " ".join(words[-size:])



def write_card(folder: Path, r: dict, dev_window_count: int) -> None:
    def rate(e):
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    a, v = r["accuracy"], r["vader_on_test_windows"]
    (folder / "README.md").write_text(CARD.format(
        **r, test_whole=rate(a["test_whole_reviews"]), test_windows=rate(a["test_continuation_windows"]),
        dev_whole=rate(a["dev_whole_reviews"]), dev_windows=rate(a["dev_windows"]), dev_window_count=dev_window_count,
        window_words1=r["window_words"] + 1, window_words2=2 * r["window_words"],
        neg_called_pos=rate(r["negative_windows_called_positive"]), vader_neutral=rate(v["vader_neutral"]),
        agreement=rate(v["agreement_where_vader_decides"]), vader_accuracy=rate(v["vader_accuracy_where_it_decides"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window", type=int, default=24, help="words per training window (default 24)")
    parser.add_argument("--max-features", type=int, default=100_000)
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from --out's training.json")
    args = parser.parse_args()
    if args.card_only:
        results = json.loads((args.out / "training.json").read_text())
        write_card(args.out, results, results["accuracy"]["dev_windows"]["n"])
        return
    started = time.perf_counter()

    train = reviews(args.corpora, "train")
    fit = [(t, y) for t, y, i in train if not imdb_dev(i)]
    dev = [(t, y) for t, y, i in train if imdb_dev(i)]
    texts, labels = [], []
    for text, y in fit:
        for piece in [text] + windows(text, args.window):
            texts.append(piece)
            labels.append(y)
    print(f"{len(fit):,} reviews -> {len(texts):,} training texts (whole + {args.window}-word windows); "
          f"dev {len(dev):,} reviews")

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=3, sublinear_tf=True, max_features=args.max_features,
                                 dtype=np.float64)
    x = vectorizer.fit_transform(texts)
    dev_texts = [w for t, _ in dev for w in windows(t, args.window)]
    dev_labels = [y for t, y in dev for _ in windows(t, args.window)]
    dev_x = vectorizer.transform(dev_texts)
    search = []
    for c in CS:
        model = LogisticRegression(C=c, max_iter=2000).fit(x, labels)
        loss = log_loss(dev_labels, model.predict_proba(dev_x)[:, 1])
        search.append({"C": c, "dev_window_log_loss": loss})
        print(f"C {c:5.2f}  dev window log-loss {loss:.4f}", flush=True)
    best = min(search, key=lambda r: r["dev_window_log_loss"])["C"]
    model = LogisticRegression(C=best, max_iter=2000).fit(x, labels)
    fit_seconds = time.perf_counter() - started

    # The card's figures, from the exported file as the scorer reads it (not from scikit-learn).
    args.out.mkdir(parents=True, exist_ok=True)
    path = export_tfidf(vectorizer, model, args.out / "classifier.safetensors")
    scorer = TfidfLogistic(path, name="imdb")
    test = reviews(args.corpora, "test")
    test_labels = [y for _, y, _ in test]
    whole = scorer([t for t, _, _ in test])
    cont = [continuation_window(t, args.window) for t, _, _ in test]
    cont_p = scorer(cont)
    dev_whole = scorer([t for t, _ in dev])
    vader = Vader()
    v = vader(cont)
    vader_label = [vader.label(s) for s in v]
    decided = [(lab, p) for lab, p in zip(vader_label, cont_p) if lab != "neutral"]
    neg_windows = [p for p, y in zip(cont_p, test_labels) if y == 0]
    results = {
        "C": best, "search": search, "window_words": args.window, "features": len(scorer.terms),
        "fit_reviews": len(fit), "fit_texts": len(texts), "dev_reviews": len(dev), "test_reviews": len(test),
        "accuracy": {"test_whole_reviews": accuracy(test_labels, whole).as_dict(),
                     "test_continuation_windows": accuracy(test_labels, cont_p).as_dict(),
                     "dev_whole_reviews": accuracy([y for _, y in dev], dev_whole).as_dict(),
                     "dev_windows": accuracy(dev_labels, scorer(dev_texts)).as_dict()},
        "negative_windows_called_positive": wilson(sum(p >= 0.5 for p in neg_windows), len(neg_windows)).as_dict(),
        "vader_on_test_windows": {
            "agreement_where_vader_decides": wilson(sum((lab == "positive") == (p >= 0.5) for lab, p in decided),
                                                    len(decided)).as_dict(),
            "vader_neutral": wilson(len(cont) - len(decided), len(cont)).as_dict(),
            "vader_accuracy_where_it_decides": wilson(
                sum((lab == "positive") == bool(y) for lab, y in zip(vader_label, test_labels) if lab != "neutral"),
                len(decided)).as_dict()},
        "fit_seconds": fit_seconds, "sklearn": sklearn.__version__, "python": platform.python_version(),
    }
    export_tfidf(vectorizer, model, path, info={k: results[k] for k in ("C", "window_words", "fit_reviews",
                                                                         "accuracy")})
    (args.out / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    write_card(args.out, results, len(dev_texts))
    print(json.dumps(results["accuracy"], indent=1))
    print(f"negative windows called positive: {results['negative_windows_called_positive']['value']:.3f}; "
          f"agreement with VADER where it decides: "
          f"{results['vader_on_test_windows']['agreement_where_vader_decides']['value']:.3f}")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
