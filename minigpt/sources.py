"""Where a model's files come from: a local folder, or a Hugging Face hub repo fetched into the
normal HF cache. The model and the tokenizer resolve their files through this one path.

A name that is an existing folder is local; then come the short names of the checkpoints shipped
in the package (`tiny-books`); anything else must look like a hub id (`gpt2`, `org/name`). Hub
files are fetched one by one, only those asked for, at `revision`; `HF_HUB_OFFLINE=1` makes
huggingface_hub answer from the cache alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoints import SHIPPED


class CheckpointError(ValueError):
    """A checkpoint (or one of its files) that is missing, unsafe, malformed, or does not fit."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_WHY = (
    "pickled checkpoints (.bin/.pt/.pth/.ckpt) are never opened, because unpickling can run "
    "arbitrary code. Convert once, in an environment you trust, with transformers: "
    "GPT2LMHeadModel.from_pretrained(SRC).save_pretrained(DST) writes model.safetensors."
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class Source:
    """A local folder, or a hub repo at a revision. `file(name)` gives a local path to a file."""

    def __init__(self, folder: Path | None = None, repo_id: str | None = None, revision: str | None = None):
        self.folder, self.repo_id, self.revision = folder, repo_id, revision
        self.uncached: list[str] = []  # hub files we could not find: not cached, hub unreachable

    def __str__(self):
        if self.folder is not None:
            return str(self.folder)
        return f"hub repo {self.repo_id!r}" + (f" at revision {self.revision!r}" if self.revision else "")

    def file(self, filename: str, required: bool = True) -> Path | None:
        """Path to `filename`; None if it does not exist and not `required`, else an error."""
        if self.folder is not None:
            path = self.folder / filename
            if path.is_file():
                return path
            if required:
                raise CheckpointError(f"{self.folder}: no {filename}")
            return None
        return self._fetch(filename, required)

    def _fetch(self, filename: str, required: bool) -> Path | None:
        # Imported here so that local folders never pay for importing the hub client.
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.repo_id, filename, revision=self.revision))
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
            self.uncached.append(filename)
            if not required:
                return None
            raise CheckpointError(
                f"{filename} of {self} is not in the local Hugging Face cache, and the hub could "
                "not be reached (no network, or HF_HUB_OFFLINE=1). Download it once with network "
                "access, or pass a local folder."
            ) from None
        except EntryNotFoundError:
            if not required:
                return None
            raise CheckpointError(f"{self} has no {filename}") from None
        except Exception as e:  # unknown repo or revision, gated repo, network errors, ...
            raise CheckpointError(f"could not fetch {filename} from {self}: {e}") from e


def locate(name_or_path: str | os.PathLike, revision: str | None = None) -> Source:
    """The Source a name refers to: an existing folder, else a checkpoint shipped with minigpt
    (`tiny-books`, see weights/), else a hub id."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and str(name_or_path) in SHIPPED:
        path = SHIPPED[str(name_or_path)]
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to hub ids, but {str(name_or_path)!r} is a local folder"
            )
        return Source(folder=path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"refusing to load {path}: {PICKLE_WHY}")
        raise CheckpointError(f"{path} is a file; pass the folder that holds it and config.json")
    name = str(name_or_path)
    if _HUB_ID.fullmatch(name) is None or ".." in name:
        raise CheckpointError(f"{name!r}: no such folder, and not a hub id (like 'gpt2' or 'org/name')")
    return Source(repo_id=name, revision=revision)
