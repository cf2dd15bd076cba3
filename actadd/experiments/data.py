"""The experiments' data: prompts, labelled texts, documents and facts, each remembering where it
came from (file:line), and the digest of what a run reads (in its settings, so that a rerun on
other data is refused). A malformed file, line or field is an error naming the file and line.

    read_labelled   sentiment data: `text<TAB>label` lines, JSONL, or a folder (IMDb's pos/ neg/)
    read_prompts    RealToxicityPrompts JSONL, or one prompt a line
    read_documents  OpenWebText JSONL, a .txt file, or a folder of them (perplexity by relevance)
    read_lama       LAMA's facts (ConceptNet, Google-RE, T-REx), one-token objects only
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


# Every missing data path says where the data sets come from (none is copied into the repository).
WHERE_TO_GET = " (docs/data.md: what each experiment reads and where to get it)"

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
        raise DataError(f"{path}: no such file or folder{WHERE_TO_GET}")
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


DEV_WORDS = 8   # a dev tweet is cut to its first words: a prompt, as RealToxicityPrompts' are sentence starts


def read_dev_prompts(path: str | Path) -> list[Prompt]:
    """Dev prompts for the toxicity search: from the Davidson et al. tweets (their labeled_data
    .jsonl: records with "tweet" and "class"), the dev split's tweets (minigpt.checkpoints
    .davidson_split), cleaned (tweet_text) and cut to their first DEV_WORDS words, those with
    at least four; from any other file, its prompts (read_prompts)."""
    from minigpt.checkpoints import davidson_split, tweet_text

    path = Path(path)
    if path.suffix == ".jsonl" and path.is_file():
        records = list(_jsonl(path))                  # read once: the first record says which kind of file
        first = records[0][0] if records else None
        if isinstance(first, dict) and "tweet" in first and "class" in first:
            out = []
            for obj, where in records:
                if not isinstance(obj.get("id"), int) or not isinstance(obj.get("tweet"), str):
                    raise DataError(f"{where}: expected a Davidson record with an integer 'id' and a 'tweet'")
                words = tweet_text(obj["tweet"]).split()
                if davidson_split(obj["id"]) == "dev" and len(words) >= 4:
                    out.append(Prompt(len(out), " ".join(words[:DEV_WORDS]), where))
            return out
    return read_prompts(path)


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts for mean-centring's target and general sets: a JSONL file (the text at `field`, as
    the OpenWebText sample), a folder of .txt files (one text each), or any other file, one
    text a line (blank lines skipped)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".jsonl":
        return [text for _, text in read_documents(path, field)]
    if not path.is_file():
        raise DataError(f"{path}: no such file{WHERE_TO_GET}")
    texts = [line for line in lines(_read(path)) if line.strip()]
    if not texts:
        raise DataError(f"{path}: no texts (every line blank)")
    return texts


def read_davidson(path: str | Path, split: str) -> tuple[list[str], list[str]]:
    """(toxic, clean) tweets of one split (minigpt.checkpoints.davidson_split) of the Davidson et
    al. tweets (labeled_data.jsonl: "class" 0 hate speech, 1 offensive, 2 neither), cleaned as
    the toxicity classifier reads them (tweet_text), empty ones left out."""
    from minigpt.checkpoints import davidson_split, tweet_text

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file{WHERE_TO_GET}")
    toxic, clean = [], []
    for obj, where in _jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), int) or not isinstance(obj.get("tweet"), str) \
                or obj.get("class") not in (0, 1, 2):
            raise DataError(f"{where}: expected a Davidson record with an integer 'id', a 'tweet' and a 'class' of 0, 1 "
                            "or 2")
        text = tweet_text(obj["tweet"])
        if text and davidson_split(obj["id"]) == split:
            (clean if obj["class"] == 2 else toxic).append(text)
    if not toxic or not clean:
        raise DataError(f"{path}: the {split!r} split has {len(toxic)} toxic and {len(clean)} clean tweets; both are "
                        "needed")
    return toxic, clean


def read_documents(path: str | Path, field: str = "text") -> list[tuple[str, str]]:
    """(source, text) of each document: a JSONL file with the text at `field` (the OpenWebText
    sample: {"filename", "text"}), a .txt file (one document), or a folder of .txt files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder{WHERE_TO_GET}")
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
    prompt: str          # the sentence up to [MASK] (or the template up to [Y]), trailing space removed
    obj: str             # obj_label
    target: int          # the object's one token (with a leading space after a word)
    group: str = ""      # LAMA's source: ConceptNet, Google-RE, T-REx (or Squad)
    relation: str = ""   # its relation (ConceptNet's pred, Google-RE's, T-REx's predicate_id)


# The templates LAMA queries Google-RE with (its scripts/run_experiments.py); T-REx's are in the
# relations.jsonl of LAMA's data, by predicate_id.
GOOGLE_RE_TEMPLATES = {"place_of_birth": "[X] was born in [Y] .", "date_of_birth": "[X] (born [Y]).",
                       "place_of_death": "[X] died in [Y] ."}
LAMA_GROUPS = (("ConceptNet", "ConceptNet*"), ("Google-RE", "Google_RE"), ("T-REx", "TREx"))   # a folder's


def read_lama(path: str | Path, tokenizer: Tokenizer) -> tuple[list[Fact], list[dict]]:
    """Facts from LAMA's data in its original schemas: a file, or LAMA's data folder (every
    .jsonl under ConceptNet*/, Google_RE/ and TREx/, with relations.jsonl for T-REx's
    templates). A record with `masked_sentences` (ConceptNet, Squad) gives a fact per sentence
    with one [MASK], its prompt the text before [MASK], as the paper's ConceptNet test does; a
    Google-RE record (`pred` /people/person/...) or a T-REx one (`predicate_id`) gives one fact,
    LAMA's template for its relation with the subject put in, cut before [Y]. Kept only where
    the object is one token: " " + obj_label after a word (how a word inside a sentence is
    tokenized), obj_label alone at the start of the text. The rest are returned as skipped,
    each with its file:line and reason. Each fact names its group and relation."""
    path = Path(path)
    if path.is_dir():
        files = [(group, f) for group, pattern in LAMA_GROUPS for folder in sorted(path.glob(pattern))
                 if folder.is_dir() for f in _files(folder, "*.jsonl")]
        if not files:
            raise DataError(f"{path}: a folder without LAMA's ConceptNet/, Google_RE/ or TREx/ .jsonl files")
    elif path.is_file():
        files = [(_group_of(path), path)]
    else:
        raise DataError(f"{path}: no such file or folder{WHERE_TO_GET}")
    templates = None
    facts, skipped = [], []
    for group, file in files:
        for obj, where in _jsonl(file):
            if not isinstance(obj, dict) or not isinstance(obj.get("obj_label"), str):
                raise DataError(f"{where}: expected a LAMA record with 'obj_label' (text)")
            label = obj["obj_label"].strip()
            if "masked_sentences" in obj and "predicate_id" not in obj and not _google_re(obj):
                if not isinstance(obj["masked_sentences"], list):
                    raise DataError(f"{where}: expected a LAMA record with 'masked_sentences' (a list), not "
                                    f"{describe(obj['masked_sentences'])}")
                relation = obj.get("pred") if isinstance(obj.get("pred"), str) else ""
                prompts = []
                for sentence in obj["masked_sentences"]:
                    if not isinstance(sentence, str) or sentence.count("[MASK]") != 1:
                        skipped.append({"source": where, "group": group, "reason": "not one [MASK] in the sentence"})
                    else:
                        prompts.append(sentence.split("[MASK]", 1)[0].rstrip())
            else:
                if _google_re(obj):
                    relation = obj["pred"].rsplit("/", 1)[1]
                    template = GOOGLE_RE_TEMPLATES.get(relation)
                    group = "Google-RE"
                else:
                    relation = obj.get("predicate_id")
                    if not isinstance(relation, str):
                        raise DataError(f"{where}: expected a LAMA record: 'masked_sentences' (ConceptNet, Squad), "
                                        "'pred' /people/person/... (Google-RE) or 'predicate_id' (T-REx)")
                    templates = _trex_templates(file) if templates is None else templates
                    template = templates.get(relation)
                    group = "T-REx"
                subject = obj.get("sub_label")
                if template is None or not isinstance(subject, str):
                    raise DataError(f"{where}: relation {relation!r} has no LAMA template" if template is None
                                    else f"{where}: expected 'sub_label' (text)")
                if template.index("[Y]") < template.index("[X]"):      # a prompt cut there has no subject
                    skipped.append({"source": where, "group": group,
                                    "reason": "the template puts the object before the subject"})
                    continue
                prompts = [template.replace("[X]", subject.strip()).split("[Y]", 1)[0].rstrip()]
            for prompt in prompts:
                ids = tokenizer.encode((" " if prompt else "") + label, disallowed_special=())
                if len(ids) != 1:
                    skipped.append({"source": where, "group": group, "reason": f"object {label!r} is {len(ids)} tokens"})
                    continue
                facts.append(Fact(len(facts) + len(skipped), where, prompt, label, ids[0], group, relation))
    if not facts:
        raise DataError(f"{path}: no fact with a one-token object ({len(skipped)} masked sentences skipped: "
                        f"{skipped[0]['reason'] if skipped else 'the file is empty'}); P@K needs one-token objects")
    return facts, skipped


def _group_of(file: Path) -> str:
    """The LAMA group a file belongs to, by its folder (ConceptNet for a file elsewhere)."""
    for group, pattern in LAMA_GROUPS + (("Squad", "Squad"),):
        if file.parent.match(pattern):
            return group
    return "ConceptNet"


def _google_re(record: dict) -> bool:
    return isinstance(record.get("pred"), str) and record["pred"].startswith(("/people/person/",
                                                                              "/people/deceased_person/"))


def _trex_templates(file: Path) -> dict[str, str]:
    """T-REx's templates by relation, from relations.jsonl beside the TREx folder (LAMA's layout)."""
    for candidate in (file.parent.parent / "relations.jsonl", file.parent / "relations.jsonl"):
        if candidate.is_file():
            out = {}
            for obj, where in _jsonl(candidate):
                if not isinstance(obj, dict) or not isinstance(obj.get("relation"), str) \
                        or not isinstance(obj.get("template"), str) or obj["template"].count("[Y]") != 1 \
                        or obj["template"].count("[X]") != 1:
                    raise DataError(f"{where}: expected a relation with a template holding [X] and [Y] once each")
                out[obj["relation"]] = obj["template"]
            return out
    raise DataError(f"{file}: T-REx records need LAMA's relations.jsonl (their templates) beside the TREx folder; "
                    f"none at {file.parent.parent / 'relations.jsonl'}")
