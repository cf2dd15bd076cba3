"""Draw docs/sweep.png, the walkthrough's layer x coefficient map of the log-prob shift on
held-out Moby Dick, with the same call as the walkthrough's last step:

    python docs/make_figures.py            # needs the plot extra and MINIGPT_CORPORA (or ../shared)
"""

import os
import shutil
import tempfile
from pathlib import Path

import minigpt
from minigpt.checkpoints import held_out_chunks
from actadd import measure

HERE = Path(__file__).resolve().parent
PLUS, MINUS = "whale", ""  # the walkthrough's prompt pair


def main():
    corpora = Path(os.environ.get("MINIGPT_CORPORA", HERE.parent.parent / "shared" / "corpora"))
    model, tok = minigpt.load("tiny-books")
    rows = measure.sweep(model, tok, PLUS, MINUS, layers=range(4), coeffs=[1, 2, 4, 8],
                         texts=held_out_chunks(tok, corpora / "gutenberg" / "pg2701.txt"), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        written = measure.write_sweep(rows, Path(tmp) / "sweep")
        png = next(p for p in written if p.suffix == ".png")
        shutil.copyfile(png, HERE / "sweep.png")
    print(f"wrote {HERE / 'sweep.png'}")


if __name__ == "__main__":
    main()
