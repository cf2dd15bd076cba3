"""Hostile experiment inputs: data files (JSONL and text), results files and pairs files. JSONL
lines holding U+2028 and the other breaks str.splitlines() knows, JSON nested too deep, folders
holding a folder named *.txt, a labelled TSV with a header row, a pairs file with a byte-order
mark, results records that are not records, a classifier folder holding only a pickle; a scored
run killed at any line resumes to the same bytes; fuzzes of JSONL data and of results files."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actadd
import minigpt
from actadd.experiments import data, generation, likelihood
from actadd.experiments.data import DataError
from actadd.experiments.results import ResumeError
from actadd.experiments.scorers import ScorerError, get_scorer
from hostile import bounded

BREAKS = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"   # line breaks to str.splitlines(), text to JSON


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(outcome, kind, *parts):
    assert isinstance(outcome, kind), repr(outcome)
    text = str(outcome)
    assert "\n" not in text and all(p in text for p in parts), text


# --- data files --------------------------------------------------------------------------------


def test_jsonl_lines_holding_unicode_line_breaks_are_one_record_each(tmp_path, books):
    _, tok = books
    texts = [f"one{b}two" for b in BREAKS]
    rows = [json.dumps({"text": t, "label": i % 2, "prompt": {"text": t}, "obj_label": "sea",
                        "masked_sentences": [f"the{b}ship sailed on the [MASK]."]}, ensure_ascii=False)
            for i, (t, b) in enumerate(zip(texts, BREAKS))]
    path = write(tmp_path / "d.jsonl", "\n".join(rows) + "\n")
    assert [p.text for p in data.read_labelled(path)] == texts
    assert [p.text for p in data.read_prompts(path)] == texts
    assert [text for _, text in data.read_documents(path, field="text")] == texts
    facts, skipped = data.read_lama(path, tok)
    assert [f.source for f in facts] == [f"{path}:{i}" for i in range(1, len(BREAKS) + 1)] and not skipped
    plain = write(tmp_path / "p.txt", "first\u2028still first\r\nsecond\n")       # one prompt a line: \n ends a line
    assert [p.text for p in data.read_prompts(plain)] == ["first\u2028still first", "second"]


@pytest.mark.parametrize("reader", ["read_labelled", "read_prompts", "read_documents"])
def test_a_jsonl_line_nested_too_deep_names_the_file_and_line(tmp_path, reader):
    path = write(tmp_path / "d.jsonl", '{"text": "fine", "label": 1, "prompt": {"text": "a"}}\n' + "[" * 5000 + "]" * 5000 + "\n")
    outcome, _, _ = bounded(getattr(data, reader), path)
    one_line_error(outcome, DataError, f"{path}:2: JSON nested deeper than 64 levels")


def test_data_and_corpus_folders_skip_a_folder_named_like_a_text_file(tmp_path, books):
    _, tok = books
    for folder in (tmp_path / "labelled", tmp_path / "imdb" / "pos", tmp_path / "imdb" / "neg", tmp_path / "docs"):
        folder.mkdir(parents=True)
        (folder / "trap.txt").mkdir()
    write(tmp_path / "labelled" / "a.txt", "good film\t1\n")
    write(tmp_path / "imdb" / "pos" / "1.txt", "loved it")
    write(tmp_path / "imdb" / "neg" / "1.txt", "hated it")
    write(tmp_path / "docs" / "a.txt", "The whale rose.")
    assert [p.text for p in data.read_labelled(tmp_path / "labelled")] == ["good film"]
    assert [p.text for p in data.read_labelled(tmp_path / "imdb")] == ["hated it", "loved it"]
    assert data.read_documents(tmp_path / "docs") == [(str(tmp_path / "docs" / "a.txt"), "The whale rose.")]
    assert len(actadd.measure.read_corpus(tmp_path / "docs", tok)) == 1
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.txt").mkdir()
    one_line_error(bounded(actadd.measure.read_corpus, tmp_path / "only", tok)[0], ValueError, "a folder with no .txt files")
    one_line_error(bounded(data.read_prompts, tmp_path / "only")[0], DataError, "no such file (a folder)")


def test_a_labelled_tsv_with_a_header_row(tmp_path):
    path = write(tmp_path / "a.tsv", "review\tsentiment\ngood film\t1\nbad film\t0\n")
    assert [(p.text, p.label) for p in data.read_labelled(path)] == [("good film", "positive"), ("bad film", "negative")]
    one_line_error(bounded(data.read_labelled, path, header=False)[0], DataError,
                   f'{path}:1: label "sentiment" (expected 0/1, neg/pos or negative/positive)')
    bad = write(tmp_path / "b.tsv", "good film\tmaybe\nbad film\tmaybe\n")            # two bad labels: not a header
    one_line_error(bounded(data.read_labelled, bad)[0], DataError, f'{bad}:1: label "maybe"')


def test_a_pairs_file_with_a_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes("\ufeffThe whale\tThe horse\r\nthe sea\tthe land\r\n".encode("utf-8"))
    assert actadd.read_pairs(path) == [("The whale", "The horse"), ("the sea", "the land")]
    path.write_bytes(b"the sea\tthe land\n\xff\n")
    one_line_error(bounded(actadd.read_pairs, path)[0], ValueError, f"{path}:2: not UTF-8 text")


def test_a_classifier_folder_holding_only_a_pickle_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    outcome, _, _ = bounded(get_scorer, f"hf:{tmp_path}", "sentiment")
    one_line_error(outcome, ScorerError, "pytorch_model.bin and no .safetensors file; pickled checkpoints are never loaded")


# --- results files -----------------------------------------------------------------------------


SENTENCES = ["The food was cold and the service slow\tneg", "I will never come back here\tneg",
             "A dull and tired film\tneg", "What a lovely day by the sea\tpos"]


def sentiment_run(books, tmp_path, out):
    model, tok = books
    texts = data.read_labelled(write(tmp_path / "s.tsv", "\n".join(SENTENCES) + "\n"))
    return generation.sentiment(model, tok, texts, out, layer=0, coeff=4.0, samples=2, max_new_tokens=6,
                                batch_rows=4, scorer="vader", progress=False)


def test_a_scored_run_killed_at_any_line_resumes_to_the_same_bytes(books, tmp_path):
    """A stop between a batch's samples and its scores (where a kill lands in a slow scored run)
    used to leave the resumed file in another line order. Every prefix of the finished file, cut
    at a line end or inside a line, resumes to the finished file's bytes."""
    sentiment_run(books, tmp_path, tmp_path / "whole")
    whole = (tmp_path / "whole" / "results.jsonl").read_bytes()
    ends = [i + 1 for i, b in enumerate(whole) if b == ord("\n")]
    cuts = ends[:-1] + [end - 7 for end in ends[1:]]                          # at a line end, and torn
    kinds = [json.loads(line)["kind"] for line in whole.splitlines()]
    assert kinds.count("sample") == kinds.count("score") == 3 * 3 * 2       # 3 negatives x 3 conditions x 2
    for cut in cuts:
        out = tmp_path / f"cut{cut}"
        out.mkdir()
        (out / "results.jsonl").write_bytes(whole[:cut])
        sentiment_run(books, tmp_path, out)
        assert (out / "results.jsonl").read_bytes() == whole, cut
        assert (out / "summary.json").read_bytes() == (tmp_path / "whole" / "summary.json").read_bytes(), cut


@pytest.mark.parametrize("line,message", [
    ("{}", "{} (expected a record: an object whose kind is \"sample\" or \"score\")"),
    ("[1, 2]", "[1, 2] (expected a record"),
    ('{"kind": "sample"}', "condition: missing"),
    ('{"kind": "note", "text": "hi"}', '{"kind": "note", "text": "hi"} (expected a record'),
    ("[" * 200 + "]" * 200, "JSON nested deeper than 64 levels"),
])
def test_a_results_line_that_is_not_a_record_is_refused_naming_the_line(books, tmp_path, line, message):
    sentiment_run(books, tmp_path, tmp_path / "run")
    path = tmp_path / "run" / "results.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = line
    path.write_text("\n".join(lines) + "\n")
    outcome, _, _ = bounded(sentiment_run, books, tmp_path, tmp_path / "run", megabytes=300)
    one_line_error(outcome, ResumeError, f"{path}:4: ", message)


def test_a_results_file_that_is_a_folder_is_refused_naming_it(books, tmp_path):
    """Before: an IsADirectoryError traceback."""
    (tmp_path / "run" / "results.jsonl").mkdir(parents=True)
    outcome, _, _ = bounded(sentiment_run, books, tmp_path, tmp_path / "run", megabytes=300)
    one_line_error(outcome, ResumeError, f"{tmp_path / 'run' / 'results.jsonl'}: a folder")


def test_a_field_of_the_wrong_type_is_named(books, tmp_path):
    sentiment_run(books, tmp_path, tmp_path / "run")
    path = tmp_path / "run" / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["fluency"]["logprob"] = "minus three"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    outcome, _, _ = bounded(sentiment_run, books, tmp_path, tmp_path / "run", megabytes=300)
    one_line_error(outcome, ResumeError, f"{path}:2: fluency.logprob: \"minus three\" is a string")


def test_likelihood_results_are_checked_too(books, tmp_path):
    model, tok = books
    documents = [("a", " ".join(["The whale rose from the sea beside the ship."] * 8))]
    run = dict(plus="whale", minus="", layer=1, coeff=2.0, words=["whale", "sea"], chunk_tokens=16, progress=False)
    likelihood.relevance(model, tok, documents, tmp_path / "r", **run)
    path = tmp_path / "r" / "results.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "predictions": None})
    path.write_text("\n".join(lines) + "\n")
    outcome, _, _ = bounded(likelihood.relevance, model, tok, documents, tmp_path / "r", megabytes=300, **run)
    one_line_error(outcome, ResumeError, f"{path}:2: predictions: null is null")


# --- fuzz ---------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(list(BREAKS))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)) | TEXT, min_size=1, max_size=5),
       reader=st.sampled_from(["read_labelled", "read_prompts", "read_documents"]))
def test_fuzzed_jsonl_data_is_read_or_refused_in_one_line(tmp_path_factory, lines, reader):
    path = tmp_path_factory.mktemp("d") / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outcome, _, _ = bounded(getattr(data, reader), path)
    if isinstance(outcome, Exception):
        one_line_error(outcome, DataError, str(path))
    else:
        assert all(isinstance(getattr(item, "text", item[1] if isinstance(item, tuple) else None), str) for item in outcome)


@pytest.fixture(scope="module")
def finished(books, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    sentiment_run(books, folder, folder / "run")
    return folder


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(1, 36), key=st.sampled_from(["condition", "prompt_id", "sample", "text", "tokens", "fluency",
                                                     "score", "label", "kind", "seed", "stopped"]),
       value=JSON_VALUES)
def test_fuzzed_results_records_resume_or_are_refused_in_one_line(books, finished, tmp_path_factory, line, key, value):
    folder = tmp_path_factory.mktemp("r")
    path = folder / "run" / "results.jsonl"
    path.parent.mkdir()
    records = [json.loads(x) for x in (finished / "run" / "results.jsonl").read_text().splitlines()]
    if key in records[line]:
        records[line][key] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    outcome, _, _ = bounded(sentiment_run, books, finished, folder / "run", megabytes=300)
    if isinstance(outcome, Exception):
        one_line_error(outcome, ResumeError, str(path))
    else:
        assert np.isfinite([c["success"]["value"] for c in outcome.summary["conditions"]]).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=10) | st.sampled_from(["\t", "a\tb", "#x"]),
                    max_size=6).map("\n".join).map(str.encode) | st.binary(max_size=40))
def test_fuzzed_pairs_files_are_read_or_refused_in_one_line(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("p") / "pairs.tsv"
    path.write_bytes(raw)
    outcome, _, _ = bounded(actadd.read_pairs, path)
    if isinstance(outcome, Exception):
        one_line_error(outcome, ValueError, str(path))
    else:
        assert outcome and all(len(p) == 2 and "\t" not in p[0] + p[1] and "\n" not in p[0] + p[1] for p in outcome)
        assert all((p[0] + p[1]).strip() for p in outcome)
