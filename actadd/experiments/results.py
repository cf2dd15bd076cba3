"""The results file of an experiment: records that survive a crash.

    ResultsFile     a JSONL file of records appended as they are finished; its first line holds
                    the run's settings, so that a rerun resumes it, and a rerun with other
                    settings is refused

Summaries, CSV and plots are written whole or not at all by actadd.output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from minigpt.textfiles import describe, parse_json

from ..output import json_safe, write_text

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


class ResumeError(ValueError):
    """A results file that cannot be resumed: other settings, or not a results file."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run that saves as it goes: what is on disk, for the one line the
    command-line tools print instead of a traceback."""

    def __init__(self, path: Path | None, saved: int, total: int, unit: str):
        self.path, self.saved, self.total, self.unit = path, saved, total, unit
        where = f"saved in {path}; run the same command to resume" if path is not None else "kept in memory only"
        super().__init__(f"{saved:,} of {total:,} {unit}s {where}")


class ResultsFile:
    """Records of one run, one JSON object a line; line 1 is {"kind": "settings", ...}.

    A new file is created with the settings line. An existing one is read back: its settings
    must equal `settings` (else ResumeError naming each one that differs), a last line cut off
    by a crash is dropped, every other line must be a record of one of `kinds` ({kind: {field:
    type}}, nested for objects) or the error names the line and field, and the records are in
    `records`. `append` writes finished records with one write call and fsync, so what is
    reported done is on disk. With path None nothing is written (a run kept in memory)."""

    FORMAT = "actadd-eval-results"

    def __init__(self, path: str | os.PathLike | None, settings: dict, kinds: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.kinds = kinds
        self.settings = json.loads(json.dumps(json_safe(settings)))  # as it reads back from the file
        self.records: list[dict] = []
        self.torn = False
        if self.path is None:
            return
        if self.path.exists() and not self.path.is_file():
            raise ResumeError(f"{self.path}: a folder (or other non-file) where the run's results file goes; "
                              "remove it or choose another output folder")
        if self.path.exists():
            self._read()
        else:
            write_text(self.path, json.dumps({"kind": "settings", "format": self.FORMAT, **self.settings}) + "\n")

    def _read(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:                                   # no newline at the end: a write cut short
            lines.pop()
            self.torn = True
        if not lines:
            raise ResumeError(f"{self.path}: empty, or its settings line is incomplete; delete it to start again")
        try:
            first = parse_json(lines[0], f"{self.path}:1", ResumeError)
        except ResumeError:
            first = None
        if not isinstance(first, dict) or first.get("kind") != "settings" or first.get("format") != self.FORMAT:
            raise ResumeError(f"{self.path}:1: not an actadd eval results file (no settings line); "
                              "choose another --out")
        found = {k: v for k, v in first.items() if k not in ("kind", "format")}
        if found != self.settings:
            keys = sorted(set(found) | set(self.settings))
            diffs = [f"{k}: {_short(found.get(k, '(absent)'))} in the file, {_short(self.settings.get(k, '(absent)'))} now"
                     for k in keys if found.get(k, "(absent)") != self.settings.get(k, "(absent)")]
            raise ResumeError(f"{self.path} holds a run with other settings, which would mix into these results; "
                              "use another output folder, or the same settings to resume it. Differences: "
                              + "; ".join(diffs))
        for number, line in enumerate(lines[1:], 2):
            where = f"{self.path}:{number}"
            try:
                record = parse_json(line, where, ResumeError)
            except ResumeError as e:
                raise ResumeError(f"{e}; the file is damaged (delete that line, or the file, to go on)") from None
            if self.kinds is not None:
                check_record(record, self.kinds, where)
            self.records.append(record)

    def append(self, records: Iterable[dict]) -> None:
        records = [json_safe(r) for r in records]
        if self.torn:                                 # a line cut short by a crash: rewrite without it first
            self.keep(lambda r: True)
        self.records += records
        if self.path is None or not records:
            return
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep(self, predicate: Callable[[dict], bool]) -> int:
        """Keep only the records for which predicate holds, rewriting the file atomically (used
        on resume to drop the records of a unit of work that a crash left incomplete, which is
        then done again whole). Returns how many were dropped."""
        kept = [r for r in self.records if predicate(r)]
        dropped = len(self.records) - len(kept)
        if (dropped or self.torn) and self.path is not None:
            lines = [json.dumps({"kind": "settings", "format": self.FORMAT, **self.settings})]
            write_text(self.path, "".join(line + "\n" for line in lines + [json.dumps(r) for r in kept]))
            self.torn = False
        self.records = kept
        return dropped

    def reorder(self, key: Callable[[dict], object]) -> None:
        """Sort the records by `key` (stably), rewriting the file atomically if that moves any."""
        ordered = sorted(self.records, key=key)
        if ordered != self.records and self.path is not None:
            lines = [json.dumps({"kind": "settings", "format": self.FORMAT, **self.settings})] + [json.dumps(r) for r in ordered]
            write_text(self.path, "".join(line + "\n" for line in lines))
        self.records = ordered


def check_record(record, kinds: dict, where: str) -> None:
    """`record` an object whose kind is one of `kinds` and whose fields have their types, or a
    ResumeError naming the line and the field (a damaged file is refused, not summarized)."""
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str) or record["kind"] not in kinds:
        raise ResumeError(f"{where}: {_short(record)} (expected a record: an object whose kind is "
                          f"{' or '.join(json.dumps(k) for k in kinds)}); the file is damaged (delete that line, or the "
                          "file, to go on)")
    _check_fields(record, kinds[record["kind"]], where, "")


def _check_fields(obj: dict, fields: dict, where: str, prefix: str) -> None:
    for key, kind in fields.items():
        name = prefix + key
        if key not in obj:
            raise ResumeError(f"{where}: {name}: missing; the file is damaged (delete that line, or the file, to go on)")
        value = obj[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise ResumeError(f"{where}: {name}: {_short(value)} is {describe(value)} (expected an object)")
            _check_fields(value, kind, where, name + ".")
        elif not isinstance(value, kind) or isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                   else (kind,)):
            raise ResumeError(f"{where}: {name}: {_short(value)} is {describe(value)}; the file is damaged (delete "
                              "that line, or the file, to go on)")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
