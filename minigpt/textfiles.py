"""Reading text and JSON the same way in every reader of minigpt and actadd: configs, tokenizer
files, safetensors headers, vector manifests, GGUF metadata, eval data and results files.

    read_text(path)            UTF-8, a byte-order mark dropped; a bounded size
    lines(text)                split on "\\n" only ("\\r\\n" too): U+2028, U+0085 and the other
                               line breaks of str.splitlines() are text inside a JSON string
    parse_json(text, where)    json.loads with a nesting limit (no RecursionError) and a size limit
    read_json(path)            the two together

Errors are one ValueError subclass (or the caller's), one line of the form
`PATH[:LINE]: what is wrong (what was expected)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_DEPTH = 64                     # nesting of any file read here; tokenizer.json needs about 6
MAX_BYTES = 1 << 30                # 1 GiB: a JSON file larger than this is not one minigpt reads


class TextFileError(ValueError):
    """A text or JSON file that cannot be read: missing, not UTF-8, too large, malformed."""


def read_text(path: str | os.PathLike, error: type[ValueError] = TextFileError, max_bytes: int | None = None,
              what: str = "file") -> str:
    """The UTF-8 text of `path`, without a leading byte-order mark; `error` names the file."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise error(f"{path}: {path.stat().st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not a {what}") from None
    except PermissionError:
        raise error(f"{path}: not readable (permission denied)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return text.removeprefix("\ufeff")


def lines(text: str) -> list[str]:
    """The lines of `text`, split on "\\n" only, a "\\r" before it dropped, no empty last line
    for a final newline."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [line.removesuffix("\r") for line in out]


def parse_json(text: str | bytes, where: str, error: type[ValueError] = TextFileError, max_depth: int = MAX_DEPTH,
               max_bytes: int = MAX_BYTES):
    """json.loads(text), or `error` saying where and what: not JSON (with line and column),
    larger than `max_bytes`, or nested deeper than `max_depth` (arrays and objects)."""
    if len(text) > max_bytes:
        raise error(f"{where}: {len(text):,} bytes of JSON, more than the {max_bytes:,} allowed")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.lineno == 1 and "\n" not in (text if isinstance(text, str) else text.decode("utf-8", "replace")):
            raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None   # a JSONL line
        raise error(f"{where}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {max_depth} levels") from None
    _check_depth(value, where, error, max_depth)
    return value


def _check_depth(value, where: str, error, max_depth: int) -> None:
    if not isinstance(value, (dict, list)):
        return
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > max_depth:
            raise error(f"{where}: JSON nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def read_json(path: str | os.PathLike, error: type[ValueError] = TextFileError, max_bytes: int = MAX_BYTES,
              what: str = "JSON file"):
    """The JSON value in the file `path` (see parse_json)."""
    return parse_json(read_text(path, error, max_bytes, what), str(path), error, max_bytes=max_bytes)


def describe(value) -> str:
    """A JSON value's type in JSON's words, for messages: "a string", "null", "an array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
