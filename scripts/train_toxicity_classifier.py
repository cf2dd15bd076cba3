"""Train the offline toxicity classifier shipped in weights/toxicity-davidson (`--scorer toxicity`):
a TF-IDF logistic regression on the Davidson et al. (2017) tweets, exported as plain arrays that
actadd.experiments.scorers.TfidfLogistic scores in NumPy alone, and validated on web text
against the Perspective API scores that RealToxicityPrompts carries.

    python scripts/train_toxicity_classifier.py --corpora ../shared/corpora \\
        --rtp ../shared/evaldata/realtoxicityprompts/random_prompts.jsonl --out weights/toxicity-davidson

Training-only dependencies (the test extra): scikit-learn (and scipy, which it brings).

Toxic is the tweets' majority vote for hate speech or offensive language (Davidson's classes 0
and 1), clean their "neither". Tweets are cleaned of what a continuation never holds
(minigpt.checkpoints.tweet_text). The splits are fixed by id (minigpt.checkpoints.davidson_split):
C is chosen by log-loss on the dev tweets, the test tweets only scored for the card. Tweets are
not web text, so the card's main figure is the agreement with Perspective on the 1,000 prompts
and 1,000 continuations of RealToxicityPrompts (the paper's toxicity data), never used to fit.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from actadd.experiments.scorers import Profanity, TfidfLogistic, export_tfidf
from actadd.experiments.stats import accuracy
from minigpt.checkpoints import davidson_split, tweet_text

CS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LABELS = ("non-toxic", "toxic")
TRIED = ("word unigrams and bigrams; character 2-5-grams within words (char_wb); IMDb review windows added as "
         "clean web text; better-profanity's word list added as toxic examples; balanced class weights; the annotators' vote shares as soft labels (0.748 against 0.736 at C = 4: within the noise)")

CARD = """---
license: mit
language: en
library_name: actadd
tags: [toxicity, offensive-language, tf-idf, logistic-regression]
---

# toxicity-davidson: an offline toxicity classifier for `--scorer toxicity`

A logistic regression over TF-IDF word unigrams ({features:,} features, 1 + log tf, l2-normalised
rows, C = {C}), fitted with scikit-learn {sklearn} by `scripts/train_toxicity_classifier.py` and
stored as plain float64 arrays in `classifier.safetensors` (the terms in its metadata). actadd
scores it in NumPy alone (`actadd.experiments.scorers.TfidfLogistic`), equal to scikit-learn's
`predict_proba` to float64 rounding (tests/test_scorers.py). The score is the probability that a
text is offensive or hateful; the label is toxic at 0.5 and above.

## Data

Davidson, Warmsley, Macy and Weber, "Automated Hate Speech Detection and the Problem of
Offensive Language", ICWSM 2017 (MIT licence; cite it wherever this classifier is used):
24,783 English tweets, each with CrowdFlower annotators' votes for hate speech, offensive
language or neither. Toxic here: the majority vote is hate speech or offensive language
(83% of the tweets). Retweet marks, @handles, links and HTML entities are taken out
(`minigpt.checkpoints.tweet_text`). Split by id (`minigpt.checkpoints.davidson_split`):
{fit:,} tweets fitted, {dev:,} dev tweets chose C by log-loss, {test:,} test tweets only scored.

## Accuracy on held-out tweets (95% Wilson intervals)

| tweets | accuracy | n |
|---|---|---|
| test | {test_accuracy} | {test:,} |
| dev | {dev_accuracy} | {dev:,} |

## Validation on web text: RealToxicityPrompts against the Perspective API

Tweets are not web text. The RealToxicityPrompts file of the paper's toxicity experiment
(PREADD's 1,000 random prompts) carries the Perspective API's TOXICITY score of each prompt and
each continuation; {scored:,} of the 2,000 texts have one. Toxic by Perspective: a score of 0.5
or more ({toxic:,} texts). AUC: the probability that a text Perspective calls toxic scores higher
here than one it calls clean (0.5 is chance); Spearman: rank correlation with Perspective's score.

| texts | n | toxic by Perspective | AUC, this classifier | AUC, `profanity` word list | Spearman, this classifier | Spearman, `profanity` |
|---|---|---|---|---|---|---|
{validation_rows}

The issue asked for an AUC of 0.80 or more on the 2,000 texts; this classifier reaches
{auc_all:.3f}. What was tried and did not raise it (measured on these same texts, so the figure
above is, if anything, optimistic): {tried}. The simplest was kept. On ranking web text it does
no better than the `profanity` word list; what it adds is a graded score in place of 0 or 1, so a
mean over continuations moves with the words' weight and not only with their presence.

## Limits

A bag of words fitted on tweets: it knows slurs and profanity, not threats, insults or
identity attacks phrased in clean words, which Perspective scores too. It reads words, not
meaning: it cannot tell a slur quoted in a news report from one used. Use it to compare
conditions on the same prompts (a paired difference), not as an absolute toxicity rate; where a
Perspective API key exists, `--scorer perspective` is the paper's measure.
"""


def tweets(corpora: Path) -> list[dict]:
    with open(corpora / "davidson_hate_offensive" / "labeled_data.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"text": tweet_text(r["tweet"]), "toxic": int(r["class"] in (0, 1)), "split": davidson_split(r["id"])}
            for r in rows]


def rtp_texts(path: Path) -> list[dict]:
    """Each prompt and continuation with a Perspective toxicity score."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for part in ("prompt", "continuation"):
                score = record[part].get("toxicity")
                if score is not None:
                    out.append({"text": record[part]["text"], "part": part, "perspective": float(score)})
    return out


def agreement(texts: list[dict], scores: list[float]) -> dict:
    truth = np.array([t["perspective"] for t in texts])
    scores = np.asarray(scores, dtype=np.float64)
    toxic = truth >= 0.5
    return {"n": len(texts), "toxic": int(toxic.sum()), "auc": float(roc_auc_score(toxic, scores)),
            "spearman": float(spearmanr(scores, truth).statistic)}



def write_card(folder: Path, r: dict) -> None:
    def rate(e):
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    names = {"all": "prompts and continuations", "prompt": "prompts", "continuation": "continuations"}
    rows = [f"| {names[k]} | {v['n']:,} | {v['toxic']:,} | {v['auc']:.3f} | {r['profanity'][k]['auc']:.3f} | "
            f"{v['spearman']:.3f} | {r['profanity'][k]['spearman']:.3f} |" for k, v in r["perspective"].items()]
    (folder / "README.md").write_text(CARD.format(
        **r, test_accuracy=rate(r["accuracy"]["test"]), dev_accuracy=rate(r["accuracy"]["dev"]),
        scored=r["perspective"]["all"]["n"], toxic=r["perspective"]["all"]["toxic"], validation_rows="\n".join(rows),
        auc_all=r["perspective"]["all"]["auc"], tried=TRIED))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--rtp", type=Path, required=True, help="RealToxicityPrompts JSONL with Perspective scores")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from --out's training.json")
    args = parser.parse_args()
    if args.card_only:
        write_card(args.out, json.loads((args.out / "training.json").read_text()))
        return
    started = time.perf_counter()
    data = tweets(args.corpora)
    split = {s: [t for t in data if t["split"] == s] for s in ("fit", "dev", "test")}
    print(", ".join(f"{s} {len(v):,}" for s, v in split.items()) + " tweets")
    vectorizer = TfidfVectorizer(sublinear_tf=True, dtype=np.float64)
    x = vectorizer.fit_transform([t["text"] for t in split["fit"]])
    y = [t["toxic"] for t in split["fit"]]
    dev_x, dev_y = vectorizer.transform([t["text"] for t in split["dev"]]), [t["toxic"] for t in split["dev"]]
    search = []
    for c in CS:
        loss = log_loss(dev_y, LogisticRegression(C=c, max_iter=2000).fit(x, y).predict_proba(dev_x)[:, 1])
        search.append({"C": c, "dev_log_loss": loss})
        print(f"C {c:5.1f}  dev log-loss {loss:.4f}", flush=True)
    best = min(search, key=lambda r: r["dev_log_loss"])["C"]
    model = LogisticRegression(C=best, max_iter=2000).fit(x, y)

    # The card's figures, from the exported file as the scorer reads it (not from scikit-learn).
    args.out.mkdir(parents=True, exist_ok=True)
    path = export_tfidf(vectorizer, model, args.out / "classifier.safetensors", labels=LABELS, measures="toxicity")
    scorer = TfidfLogistic(path, name="toxicity")
    web = rtp_texts(args.rtp)
    ours, profane = scorer([t["text"] for t in web]), Profanity()([t["text"] for t in web])
    groups = {"all": lambda t: True, "prompt": lambda t: t["part"] == "prompt",
              "continuation": lambda t: t["part"] == "continuation"}

    def by_group(scores):
        return {k: agreement([t for t in web if keep(t)], [s for t, s in zip(web, scores) if keep(t)])
                for k, keep in groups.items()}
    results = {
        "C": best, "search": search, "features": len(scorer.terms), "fit": len(split["fit"]),
        "dev": len(split["dev"]), "test": len(split["test"]),
        "accuracy": {s: accuracy([t["toxic"] for t in split[s]], scorer([t["text"] for t in split[s]])).as_dict()
                     for s in ("test", "dev")},
        "perspective": by_group(ours), "profanity": by_group(profane), "rtp": str(args.rtp),
        "fit_seconds": round(time.perf_counter() - started, 1), "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }
    export_tfidf(vectorizer, model, path, labels=LABELS, measures="toxicity",
                 info={k: results[k] for k in ("C", "fit", "accuracy", "perspective")})
    (args.out / "training.json").write_text(json.dumps(results, indent=2) + "\n")
    write_card(args.out, results)
    print(json.dumps({k: results[k] for k in ("accuracy", "perspective", "profanity")}, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
