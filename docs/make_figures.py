"""Draw docs/sweep.png, the walkthrough's layer x coefficient map of the log-prob shift on
held-out Moby Dick, with the same call as the walkthrough's last step:

    python docs/make_figures.py            # needs the plot extra and MINIGPT_CORPORA (or ../shared)
"""

import os
import shutil
import tempfile
from pathlib import Path

import minigpt
from actadd import measure

HERE = Path(__file__).resolve().parent
PLUS, MINUS = "whale", ""  # the walkthrough's prompt pair


def held_out_chunks(tok, corpora: Path, book: str, n: int = 64, count: int = 40):
    text = (corpora / "gutenberg" / book).read_text(encoding="utf-8")
    ids = tok.encode(text[text.rindex("\n", 0, int(len(text) * 0.95)) + 1:])
    return [(book, [tok.bos_token_id] + ids[i:i + n]) for i in range(0, n * count, n)]


def main():
    corpora = Path(os.environ.get("MINIGPT_CORPORA", HERE.parent.parent / "shared" / "corpora"))
    model, tok = minigpt.load("tiny-books")
    rows = measure.sweep(model, tok, PLUS, MINUS, layers=range(4), coeffs=[1, 2, 4, 8],
                         texts=held_out_chunks(tok, corpora, "pg2701.txt"), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        written = measure.write_sweep(rows, Path(tmp) / "sweep")
        png = next(p for p in written if p.suffix == ".png")
        shutil.copyfile(png, HERE / "sweep.png")
    print(f"wrote {HERE / 'sweep.png'}")


if __name__ == "__main__":
    main()
