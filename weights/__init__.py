"""Checkpoints shipped with minigpt. Installed as the package `minigpt.checkpoints` (pyproject maps
it to this folder), so an installed copy finds them as a checkout does: `minigpt.load("tiny-books")`.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SHIPPED = {"tiny-books": FOLDER / "tiny-books"}  # short name -> Hugging Face folder
