"""What a command leaves behind and shows while it runs.

    atomic_write(path, write)   a file appears complete or not at all, with the user's usual
                                permissions (not the 0600 of the temporary file it comes from)
    write_text(path, text)      the same for a text
    json_safe(value)            NaN and infinities as None: JSON has no NaN
    write_outputs(out, ...)     a command's OUT/summary.json, OUT/summary.csv and OUT/STEM.png
    writable_folder(out)        an output folder checked (not made) before any work
    writable_file(path)         the same for one output file
    progress(total, ...)        a progress bar on stderr (tqdm), or nothing
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable


class OutputError(ValueError):
    """An output path that cannot be written: a file where a folder is wanted, a folder where
    a file is, a path under a file, or a place not writable."""


def writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check now that the folder `path` can be written (made later if absent): a run that would
    fail at its end fails before its first step, and a refused run leaves nothing on disk (the
    check makes and removes one empty file in the nearest folder that exists). `what` names it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{what} {path}: {existing} is a file, so nothing can be made under it")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".actadd-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {path}: {existing} cannot be written ({e.strerror or e})") from None
    return path


def writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check now that the file `path` can be written: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: a folder, not a file")
    writable_folder(path.parent, f"{what} {path}: its folder")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it onto `path`: a reader
    sees the old file or the new one, never half of one. The file gets mode 0666 less the umask,
    as open() would give it (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def json_safe(value):
    """NaN and infinities as None, recursively: JSON has no NaN (json.dumps would write one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_outputs(out: str | os.PathLike, stem: str, document: dict, rows: list[dict],
                  plot: Callable[[str], object] | None) -> list[Path]:
    """OUT/summary.json (document), OUT/summary.csv (rows) and OUT/STEM.png (plot(path), with
    matplotlib), each written atomically. Without matplotlib the plot is skipped, saying how to
    get it."""
    out = Path(out)
    written = [write_text(out / "summary.json", json.dumps(json_safe(document), indent=2) + "\n")]
    written.append(write_text(out / "summary.csv", csv_text(json_safe(rows))))
    if plot is None:
        return written
    if not matplotlib_ready():
        return written
    written.append(atomic_write(out / f"{stem}.png", plot))
    return written


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV, one column per key that any row has, in order of first appearance."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def matplotlib_ready() -> bool:
    """matplotlib with its file-only backend, or False after saying how to install it (the
    `plot` extra): a missing plot is never an error."""
    try:
        import matplotlib
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install 'minigpt-actadd[plot]')", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    return True


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, enabled: bool, desc: str, unit: str):
    """A progress bar on stderr with update(n) and close(), or one that shows nothing (disabled,
    or nothing to do)."""
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm  # installed with huggingface-hub

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
