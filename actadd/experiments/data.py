"""The experiments' data: prompts, labelled texts, documents and facts, each remembering where it
came from (file:line), and the digest of what a run reads (in its settings, so that a rerun on
other data is refused). A malformed file, line or field is an error naming the file and line.

    read_labelled   sentiment data: `text<TAB>label` lines, JSONL, or a folder (IMDb's pos/ neg/)
    read_prompts    RealToxicityPrompts JSONL, or one prompt a line
    read_documents  OpenWebText JSONL, a .txt file, or a folder of them (perplexity by relevance)
    read_lama       LAMA-format facts (ConceptNet), each cut at [MASK], one-token objects only
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from minigpt import Tokenizer
from minigpt.textfiles import describe, lines, parse_json, read_text

# The paper's wedding words (its topic experiment and perplexity by relevance), whole words, any case.
WEDDING_WORDS = ("wedding", "weddings", "wed", "marry", "married", "marriage", "bride", "groom", "honeymoon")
LABELS = {"0": "negative", "neg": "negative", "negative": "negative",
          "1": "positive", "pos": "positive", "positive": "positive"}


BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def line_breaks(text: str) -> str:
    """Each HTML line-break tag (`<br />`, as IMDb's reviews mark paragraphs) made a line break:
    the text as tiny-imdb was trained on it."""
    return BR.sub("\n", text)


class DataError(ValueError):
    """A data file that cannot be read as the experiment's data: the file, line and field say where."""


def digest(items) -> str:
    """The SHA-256 of the data a run reads, in its settings: a rerun on other data is refused."""
    return hashlib.sha256(json.dumps(list(items)).encode()).hexdigest()


@dataclass(frozen=True)
class Prompt:
    id: int            # its place among the prompts read (its seeds are [seed, id, sample])
    text: str          # what the model is given, after truncation (without <|endoftext|>)
    source: str        # file:line, for people
    label: str = ""    # sentiment data only
    ids: tuple[int, ...] | None = None   # its tokens where truncation made them (else text's)

    def tokens(self, tokenizer: Tokenizer) -> list[int]:
        """<|endoftext|> and the prompt's tokens. Data is ordinary text: a literal
        "<|endoftext|>" in it is not the special token. A truncated prompt keeps the tokens it
        was cut to (its text, decoded from them, need not encode back to the same ids)."""
        ids = list(self.ids) if self.ids is not None else tokenizer.encode(self.text, disallowed_special=())
        return [tokenizer.bos_token_id] + ids


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label",
                  header: bool | None = None, html_breaks: bool = False) -> list[Prompt]:
    """Labelled texts from `text<TAB>label` lines, a JSONL file (`text_field`, `label_field`,
    dotted for nested objects), or a folder: with pos/ and neg/ subfolders (IMDb's layout, one
    text a file) or of .txt / .tsv / .jsonl files read as above (README files left out). Labels
    0/1, neg/pos or negative/positive (any case); anything else is an error naming the file and
    line. `header`: whether a tab-separated file's first line names its columns (None: it does
    when its label is no label and the next line's is one). `html_breaks`: make each `<br />`
    tag a line break (IMDb's raw reviews, for a model trained on clean text such as tiny-imdb)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "pos").is_dir() and (path / "neg").is_dir():
            items = [(t, LABELS[d], src) for d in ("neg", "pos") for t, src in _folder_texts(path / d)]
        else:
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".tsv", ".jsonl") and p.is_file()
                           and p.stem.lower() != "readme")
            if not files:
                raise DataError(f"{path}: a folder with no .txt, .tsv or .jsonl files and no pos/ and neg/ subfolders")
            items = [item for f in files for item in _labelled_file(f, text_field, label_field, header)]
    else:
        items = _labelled_file(path, text_field, label_field, header)
    if not items:
        raise DataError(f"{path}: no labelled texts")
    return [Prompt(i, line_breaks(text) if html_breaks else text, src, label) for i, (text, label, src) in enumerate(items)]


def _files(folder: Path, pattern: str) -> list[Path]:
    """The files (not folders, whatever their name) of `folder` matching `pattern`, in order."""
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _folder_texts(folder: Path):
    for f in _files(folder, "*.txt"):
        yield _read(f).strip(), f"{f}"


def _read(path: Path) -> str:
    return read_text(path, DataError)


def _label(value, where: str) -> str:
    label = LABELS.get(str(value).strip().lower()) if isinstance(value, (str, int)) and not isinstance(value, bool) \
        else None
    if label is None:
        raise DataError(f"{where}: label {json.dumps(value)[:40]} (expected 0/1, neg/pos or negative/positive)")
    return label


def _labelled_file(path: Path, text_field: str, label_field: str, header: bool | None = None) -> list[tuple[str, str, str]]:
    if path.suffix == ".jsonl":
        return [(_field(obj, text_field, where), _label(_field(obj, label_field, where, text=False), where), where)
                for obj, where in _jsonl(path)]
    rows = []
    for number, line in enumerate(lines(_read(path)), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if "\t" not in line:
            raise DataError(f"{where}: expected 'text<TAB>label', found no tab")
        text, label = line.rsplit("\t", 1)
        rows.append((text.strip(), label, where))
    if rows and (header or header is None and _is_header(rows)):
        rows = rows[1:]
    return [(text, _label(label, where), where) for text, label, where in rows]


def _is_header(rows) -> bool:
    """A first row whose label is no label, followed by one whose label is: column names."""
    def valid(label):
        return LABELS.get(label.strip().lower()) is not None
    return len(rows) > 1 and not valid(rows[0][1]) and valid(rows[1][1])


def _jsonl(path: Path):
    """(object, "file:line") of each non-blank line. Lines split on "\n" only: U+2028 and the
    other breaks that str.splitlines() knows are text inside a JSON string."""
    for number, line in enumerate(lines(_read(path)), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        yield parse_json(line, where, DataError), where


def _field(obj, dotted: str, where: str, text: bool = True):
    """obj["a"]["b"] for dotted "a.b"; text unless `text` is False (a label may be a number)."""
    value = obj
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: no field {dotted!r} (missing {part!r} in {describe(value)})")
        value = value[part]
    if text and not isinstance(value, str):
        raise DataError(f"{where}: {dotted}: {describe(value)} (expected text)")
    return value


def read_prompts(path: str | Path, field: str = "prompt.text") -> list[Prompt]:
    """Prompts from a JSONL file, the text at `field` (RealToxicityPrompts: {"prompt": {"text":
    ...}}), or from a text file, one prompt a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    if path.suffix == ".jsonl":
        items = [(_field(obj, field, where), where) for obj, where in _jsonl(path)]
    else:
        items = [(line, f"{path}:{n}") for n, line in enumerate(lines(_read(path)), 1) if line.strip()]
    if not items:
        raise DataError(f"{path}: no prompts")
    return [Prompt(i, text, where) for i, (text, where) in enumerate(items)]


def read_documents(path: str | Path, field: str = "text") -> list[tuple[str, str]]:
    """(source, text) of each document: a JSONL file with the text at `field` (the OpenWebText
    sample: {"filename", "text"}), a .txt file (one document), or a folder of .txt files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        docs = [(str(f), _read(f)) for f in _files(path, "*.txt")]
    elif path.suffix == ".jsonl":
        docs = []
        for obj, where in _jsonl(path):
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise DataError(f"{where}: expected an object with a text field {field!r}")
            docs.append((where, obj[field]))
    else:
        docs = [(str(path), _read(path))]
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


@dataclass(frozen=True)
class Fact:
    id: int              # its place among the masked sentences read
    source: str          # file:line
    prompt: str          # the sentence up to [MASK], trailing space removed
    obj: str             # obj_label
    target: int          # the object's one token (with a leading space after a word)


def read_lama(path: str | Path, tokenizer: Tokenizer) -> tuple[list[Fact], list[dict]]:
    """Facts from LAMA-format JSONL ({"masked_sentences": [...], "obj_label": ...}; ConceptNet's
    test.jsonl): each masked sentence with one [MASK] is a fact, its prompt the text before
    [MASK]. Kept only where the object is one token: " " + obj_label after a word (how GPT-2
    tokenizes a word inside a sentence), obj_label alone at the start of the text. The rest are
    returned as skipped, each with its file:line and reason."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    facts, skipped = [], []
    for obj, where in _jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("obj_label"), str) \
                or not isinstance(obj.get("masked_sentences"), list):
            raise DataError(f"{where}: expected a LAMA record with 'masked_sentences' (a list) and 'obj_label' (text)")
        label = obj["obj_label"].strip()
        for sentence in obj["masked_sentences"]:
            if not isinstance(sentence, str) or sentence.count("[MASK]") != 1:
                skipped.append({"source": where, "reason": "not one [MASK] in the sentence"})
                continue
            before = sentence.split("[MASK]", 1)[0]
            prompt = before.rstrip()
            ids = tokenizer.encode((" " if prompt else "") + label, disallowed_special=())
            if len(ids) != 1:
                skipped.append({"source": where, "reason": f"object {label!r} is {len(ids)} tokens"})
                continue
            facts.append(Fact(len(facts) + len(skipped), where, prompt, label, ids[0]))
    if not facts:
        raise DataError(f"{path}: no fact with a one-token object ({len(skipped)} masked sentences skipped: "
                         f"{skipped[0]['reason'] if skipped else 'the file is empty'}); P@K needs one-token objects")
    return facts, skipped
