"""Draw docs/sweep.png, the walkthrough's layer x coefficient map of the log-prob shift on
held-out Moby Dick, with the same call as the walkthrough's last step, and docs/eval_topic.png,
docs/experiments.md's offline `actadd eval topic` command (whale - "" on tiny-books, 200 samples a cell),
and docs/eval_relevance.png, its `actadd eval relevance` command on the books (whale - "" at layer
0, sea words, 1,000 chunks), and docs/pairs_whale_sea.png, docs/pairs.md's `actadd pairs` report on
docs/whale_sea_pairs.tsv:

    python docs/make_figures.py            # needs the plot extra and MINIGPT_CORPORA (or ../shared)
    python docs/make_figures.py pairs      # only the pairs report (no corpora needed)
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


def main():
    if sys.argv[1:] == ["pairs"]:
        return pairs_figure(*minigpt.load("tiny-books"))
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
