"""Draw docs/sweep.png, the walkthrough's layer x coefficient map of the log-prob shift on
held-out Moby Dick, with the same call as the walkthrough's last step, and docs/eval_topic.png,
docs/experiments.md's offline `actadd eval topic` command (whale - "" on tiny-books, 200 samples a cell),
and docs/eval_relevance.png, its `actadd eval relevance` command on the books (whale - "" at layer
0, sea words, 1,000 chunks), docs/pairs_whale_sea.png, docs/pairs.md's `actadd pairs` report on
docs/whale_sea_pairs.tsv, and docs/sentiment.png, docs/sentiment.md's runs:

    python docs/make_figures.py            # needs the plot extra and MINIGPT_CORPORA (or ../shared)
    python docs/make_figures.py pairs      # only the pairs report (no corpora needed)
    python docs/make_figures.py sentiment [RUNS]   # docs/sentiment.png: docs/sentiment.md's runs on tiny-imdb

The sentiment figure takes its eight runs of 1,000 IMDb test reviews from RUNS (default
runs/sentiment-figure), generating what is not there (about 2 minutes a run on 2 cores) and
resuming what is: a folder from an earlier run with other settings is refused, so a figure
drawn from kept runs is the documented settings' own.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import minigpt
from minigpt.checkpoints import held_out_chunks
from actadd import measure, pairs
from actadd.experiments import data, generation, likelihood

HERE = Path(__file__).resolve().parent
PLUS, MINUS = "whale", ""  # the walkthrough's prompt pair
SEA_WORDS = ("whale,whales,sea,seas,ship,ships,boat,boats,captain,harpoon,water,waves,ocean,deck,sail,sails,sailor,"
             "sailors,shore").split(",")  # docs/experiments.md's --words


PAIRS_PROMPT = "In the morning I went out and looked at the"   # docs/pairs.md's actadd pairs command
PAIRS_TOPIC = [" sea", " whale", " ship", " boat", " water", " ocean", " captain", " deck"]


def pairs_figure(model, tok):
    metric = pairs.effectiveness_metric(model, tok, PAIRS_PROMPT, [tok.encode(w)[0] for w in PAIRS_TOPIC])
    report = pairs.pair_report(model, tok, pairs.read_pairs(HERE / "whale_sea_pairs.tsv"), 0, 1.8, metric)
    report.plot(str(HERE / "pairs_whale_sea.png"))
    print(f"wrote {HERE / 'pairs_whale_sea.png'}")


ADJ_PLUS, ADJ_MINUS = "This movie is wonderful, great and beautiful", "This movie is terrible, awful and boring"
SENTIMENT_RUNS = [  # (panel, bar label, direction, plus, minus, layer, coeff): docs/sentiment.md's tables
    ("NegToPos", "adjective pair\nlayer 1 x 16", "neg-to-pos", ADJ_PLUS, ADJ_MINUS, 1, 16.0),
    ("NegToPos", "the same,\nreversed", "neg-to-pos", ADJ_MINUS, ADJ_PLUS, 1, 16.0),
    ("NegToPos", "neutral pair\nlayer 1 x 16", "neg-to-pos", "This movie is long, old and American",
     "This movie is short, new and British", 1, 16.0),
    ("NegToPos", "Love - Hate\nlayer 3 x 4", "neg-to-pos", "Love", "Hate", 3, 4.0),
    ("PosToNeg", "adjective pair\nlayer 1 x 16", "pos-to-neg", ADJ_MINUS, ADJ_PLUS, 1, 16.0),
    ("PosToNeg", "Hate - Love\nlayer 3 x 4", "pos-to-neg", "Hate", "Love", 3, 4.0),
]


def sentiment_figure(runs: Path, corpora: Path) -> None:
    import matplotlib.pyplot as plt

    model, tok = minigpt.load("tiny-imdb")
    reviews = data.read_labelled(corpora / "imdb" / "test.jsonl", html_breaks=True)
    panels: dict = {}
    for i, (panel, label, direction, plus, minus, layer, coeff) in enumerate(SENTIMENT_RUNS):
        folder = runs / f"{i}-{direction}-L{layer}-c{coeff:g}"
        run = generation.sentiment(model, tok, reviews, folder, layer=layer, coeff=coeff, direction=direction,
                                   plus=plus, minus=minus, limit=1000, max_new_tokens=32, scorer="imdb",
                                   progress=False)
        cells = {c["condition"]: c for c in run.summary["conditions"]}
        bars = panels.setdefault(panel, {"unsteered": cells["unsteered"]})
        if "prompted" not in bars and plus == (ADJ_PLUS if direction == "neg-to-pos" else ADJ_MINUS):
            bars["prompted: the plus\nphrase as text"] = cells["prompted"]
        bars[label] = cells["steered"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [6, 4]})
    for ax, (panel, bars) in zip(axes, panels.items()):
        names, cells = list(bars), list(bars.values())
        y = [c["success"]["value"] for c in cells]
        err = [[v - c["success"]["low"] for c, v in zip(cells, y)], [c["success"]["high"] - v for c, v in zip(cells, y)]]
        colours = ["0.6", "tab:orange"] + ["tab:blue"] * (len(cells) - 2)
        ax.bar(range(len(cells)), y, yerr=err, capsize=4, color=colours)
        base = cells[0]["success"]
        ax.axhspan(base["low"], base["high"], color="0.9", zorder=0)
        for i, c in enumerate(cells):
            ax.annotate(f"ppl {c['perplexity']['value']:.1f}", (i, 0.02), ha="center", fontsize=7, color="white")
        ax.set_xticks(range(len(cells)), names, fontsize=7)
        ax.set(ylim=(0, 0.8), ylabel="continuations of the target sentiment" if panel == "NegToPos" else None,
               title=f"{panel}: 1,000 IMDb test reviews (Wilson 95%)")
    fig.suptitle("tiny-imdb, 32-token prompts, 32 new tokens, judged by the imdb classifier", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "sentiment.png", format="png", dpi=100)
    plt.close(fig)
    print(f"wrote {HERE / 'sentiment.png'}")


def main():
    if sys.argv[1:] == ["pairs"]:
        return pairs_figure(*minigpt.load("tiny-books"))
    if sys.argv[1:2] == ["sentiment"]:
        corpora = Path(os.environ.get("MINIGPT_CORPORA", HERE.parent.parent / "shared" / "corpora"))
        return sentiment_figure(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/sentiment-figure"), corpora)
    corpora = Path(os.environ.get("MINIGPT_CORPORA", HERE.parent.parent / "shared" / "corpora"))
    model, tok = minigpt.load("tiny-books")
    rows = measure.sweep(model, tok, PLUS, MINUS, layers=range(4), coeffs=[1, 2, 4, 8],
                         texts=held_out_chunks(tok, corpora / "gutenberg" / "pg2701.txt"), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        written = measure.write_sweep(rows, Path(tmp) / "sweep")
        png = next(p for p in written if p.suffix == ".png")
        shutil.copyfile(png, HERE / "sweep.png")
        generation.topic(model, tok, Path(tmp) / "topic", prompt="In the morning we", plus=PLUS, minus=MINUS,
                         coeffs=[1, 4], words=SEA_WORDS, progress=False)
        shutil.copyfile(Path(tmp) / "topic" / "topic.png", HERE / "eval_topic.png")
        likelihood.relevance(model, tok, data.read_documents(corpora / "gutenberg"), Path(tmp) / "relevance",
                             plus=PLUS, minus=MINUS, layer=0, coeff=1.0, words=SEA_WORDS, max_chunks=1000,
                             progress=False)
        shutil.copyfile(Path(tmp) / "relevance" / "relevance.png", HERE / "eval_relevance.png")
    print(f"wrote {HERE / 'sweep.png'}, {HERE / 'eval_topic.png'} and {HERE / 'eval_relevance.png'}")
    pairs_figure(model, tok)


if __name__ == "__main__":
    main()
