"""actadd eval relevance / knowledge: chunking and binning, ranks with ties and LAMA reading
against independent computations on crafted input; every steered figure against transformers
with the original's forward pre-hooks; resumption; bad input; the commands."""

import json
import math
import re

import numpy as np
import pytest

import minigpt
from actadd.experiments import data, likelihood
from actadd.cli import main
from actadd.experiments.data import Fact
from actadd.experiments.likelihood import Chunk
from actadd.experiments.results import ResumeError
from conftest import handmade_tokenizer
from minigpt import GPT2, GPT2Config

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=6, n_head=2, n_embd=16, n_positions=40, vocab_size=262)
WORDS = ("ab", "abab")


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


def density(text, words):
    """An independent count: runs of word characters, compared lowercased, over whitespace words."""
    wanted = {w.lower() for w in words}
    return sum(t in wanted for t in re.findall(r"\w+", text.lower())) / len(text.split())


# ---------------------------------------------------------------------------------------------
# Chunks, relevance, bins


def test_chunks_are_exact_token_windows_scored_by_topic_word_density():
    docs = [("d0", "the ab the ba the abab b a " * 4), ("d1", "b a the ba " * 2), ("d2", "Ab the AB, b abab. " * 5)]
    chunks, dropped = likelihood.chunk_documents(docs, TOK, chunk_tokens=7, words=WORDS)
    expected = []
    for source, text in docs:
        ids = TOK.encode(text)
        expected += [(source, i, tuple(ids[i:i + 7])) for i in range(0, len(ids) - 6, 7)]
    assert [(c.source, c.start, c.tokens) for c in chunks] == expected
    assert [c.id for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == TOK.decode(list(c.tokens))
        assert math.isclose(c.relevance, density(c.text, WORDS))
    assert dropped["tail_tokens"] == sum(len(TOK.encode(t)) % 7 for _, t in docs)
    assert dropped["documents_shorter_than_a_chunk"] == sum(len(TOK.encode(t)) < 7 for _, t in docs)
    assert any(c.relevance == 0 for c in chunks) and any(c.relevance > 0 for c in chunks)


def test_bins_put_zero_apart_and_the_rest_by_edges_or_quantiles():
    values = [0.0, 0.3, 0.0, 0.1, 0.2, 0.2, 0.5, 0.05]
    bins, which = likelihood.relevance_bins(values, edges=[0, 0.15, 0.5])
    assert [(b["low"], b["high"]) for b in bins] == [(0, 0), (0, 0.15), (0.15, 0.5)]
    assert which == [0, 2, 0, 1, 2, 2, 2, 1]                  # (a, b]: 0.5 is in the last bin
    # quantiles of the positive values: 0.05, 0.1, 0.2, 0.2, 0.3, 0.5 -> halves at the median 0.2
    bins, which = likelihood.relevance_bins(values, quantiles=2)
    assert [b["high"] for b in bins[1:]] == [float(np.quantile([0.3, 0.1, 0.2, 0.2, 0.5, 0.05], 0.5)), 0.5]
    assert which == [0, 2, 0, 1, 1, 1, 2, 1]
    # ties: many equal values merge quantile edges rather than make empty bins
    bins, which = likelihood.relevance_bins([0.1] * 5 + [0.0], quantiles=4)
    assert len(bins) == 2 and which == [1] * 5 + [0]
    with pytest.raises(ValueError, match="above the last bin edge"):
        likelihood.relevance_bins(values, edges=[0, 0.1, 0.4])
    with pytest.raises(ValueError, match="increasing"):
        likelihood.relevance_bins(values, edges=[0, 0.3, 0.2, 1])


def test_select_chunks_takes_the_most_relevant_half_and_random_unrelated_ones():
    chunks = [Chunk(i, "d", 0, (), "", t, 10) for i, t in enumerate([0, 3, 0, 1, 0, 2, 0, 0, 5, 0])]
    picked = likelihood.select_chunks(chunks, 6, seed=1)
    assert [c.id for c in picked if c.topic_words] == [1, 5, 8]   # relevance 0.3, 0.2, 0.5: the top three
    assert len(picked) == 6 and [c.id for c in picked] == sorted(c.id for c in picked)
    assert likelihood.select_chunks(chunks, 6, seed=1) == picked
    assert likelihood.select_chunks(chunks, None) == chunks


# ---------------------------------------------------------------------------------------------
# P@K: ranks and LAMA


def test_ranks_count_every_tie_against_the_object():
    """A tie with a token of a smaller or a larger id counts against the object (it used to count
    only the smaller ids: a stable sort's order)."""
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 1.0, 1.0, 2.0]])
    for target in range(5):
        got = likelihood.ranks(logits, [target] * 3)
        want = [sum(1 for i, v in enumerate(row) if i != target and v >= row[target]) for row in logits]
        assert got.tolist() == want
    assert likelihood.ranks(logits, [2, 3, 0]).tolist() == [2, 4, 0]
    assert likelihood.ranks(logits, [1, 0, 4]).tolist() == [2, 4, 1]    # the first of three equal: third place


def write_lama(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_lama_prompts_cut_at_mask_single_token_objects_only(tmp_path):
    path = write_lama(tmp_path / "test.jsonl", [
        {"masked_sentences": ["ab ba b [MASK] ."], "obj_label": "the"},          # " the": one token
        {"masked_sentences": ["the b [MASK]"], "obj_label": "ab"},                # " ab": two tokens: skipped
        {"masked_sentences": ["[MASK] is a b"], "obj_label": "ab"},               # at the start: "ab", one token
        {"masked_sentences": ["no mask here"], "obj_label": "the"},
        {"masked_sentences": ["[MASK] and [MASK]"], "obj_label": "the"},
        {"masked_sentences": ["a b [MASK] a", "b a [MASK]"], "obj_label": "the", "pred": "x"},
    ])
    facts, skipped = data.read_lama(path, TOK)
    assert [(f.prompt, f.obj, f.target, f.source.rsplit(":", 1)[1]) for f in facts] == [
        ("ab ba b", "the", TOK.encode(" the")[0], "1"), ("", "ab", TOK.encode("ab")[0], "3"),
        ("a b", "the", TOK.encode(" the")[0], "6"), ("b a", "the", TOK.encode(" the")[0], "6")]
    assert len(TOK.encode(" the")) == 1 and len(TOK.encode(" ab")) == 2
    assert sorted(s["reason"] for s in skipped) == ["not one [MASK] in the sentence"] * 2 + ["object 'ab' is 2 tokens"]
    assert len({f.id for f in facts}) == len(facts)


def write_lama_folder(root):
    """LAMA's data layout, a record or two of each group in its original schema (fields as in
    LAMA's data.zip: Google-RE with evidences and judgments, T-REx with evidences and the
    templates in relations.jsonl, ConceptNet with masked sentences)."""
    (root / "Google_RE").mkdir(parents=True)
    (root / "TREx").mkdir()
    (root / "ConceptNet").mkdir()
    google = {"pred": "/people/person/place_of_birth", "sub": "/m/0x", "obj": "/m/0y",
              "evidences": [{"url": "http://en.wikipedia.org/wiki/X", "snippet": "ab ba was born in the.",
                             "considered_sentences": ["ab ba was born in the ."]}],
              "judgments": [{"rater": "1", "judgment": "yes"}], "sub_w": None, "sub_label": "ab ba",
              "sub_aliases": [], "obj_w": None, "obj_label": "the", "obj_aliases": [], "uuid": "u1",
              "masked_sentences": ["ab ba was born in [MASK] ."]}
    death = {**google, "pred": "/people/deceased_person/place_of_death", "sub_label": "b", "obj_label": "ab",
             "masked_sentences": ["b died in [MASK] ."]}
    write_lama(root / "Google_RE" / "place_of_birth_test.jsonl", [google])
    write_lama(root / "Google_RE" / "place_of_death_test.jsonl", [death])
    trex = {"uuid": "u2", "obj_uri": "Q1", "obj_label": "the", "sub_uri": "Q2", "sub_label": "ba", "predicate_id": "P19",
            "evidences": [{"sub_surface": "ba", "obj_surface": "the", "masked_sentence": "ba came from [MASK] ."}]}
    write_lama(root / "TREx" / "P19.jsonl", [trex])
    write_lama(root / "TREx" / "P1923.jsonl", [{**trex, "predicate_id": "P1923", "uuid": "u3"}])
    write_lama(root / "relations.jsonl", [
        {"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "type": "N-1"},
        {"relation": "P1923", "template": "[Y] participated in the [X] .", "label": "participating team",
         "type": "N-M"}])
    write_lama(root / "ConceptNet" / "test.jsonl", [{"pred": "HasPrerequisite", "masked_sentences": ["a b [MASK] ."],
                                                    "obj_label": "the", "uuid": "u4", "sub_label": "a"}])
    return root


def test_lama_reads_google_re_trex_and_conceptnet_in_their_own_schemas(tmp_path):
    """Google-RE and T-REx are queried with LAMA's templates (the subject put in, cut before
    [Y]); ConceptNet with its masked sentences; each fact names its group and relation; a
    template with the object before the subject is skipped (a prompt cut there has no subject)."""
    root = write_lama_folder(tmp_path / "lama")
    facts, skipped = data.read_lama(root, TOK)
    the = TOK.encode(" the")[0]
    assert [(f.group, f.relation, f.prompt, f.obj, f.target) for f in facts] == [
        ("ConceptNet", "HasPrerequisite", "a b", "the", the),
        ("Google-RE", "place_of_birth", "ab ba was born in", "the", the),
        ("T-REx", "P19", "ba was born in", "the", the)]
    assert sorted((s["group"], s["reason"]) for s in skipped) == [
        ("Google-RE", "object 'ab' is 2 tokens"), ("T-REx", "the template puts the object before the subject")]
    # one file alone reads the same way (its templates found beside its folder)
    alone, _ = data.read_lama(root / "TREx" / "P19.jsonl", TOK)
    assert [(f.group, f.prompt) for f in alone] == [("T-REx", "ba was born in")]
    (root / "relations.jsonl").unlink()
    with pytest.raises(ValueError, match="P19.jsonl: T-REx records need LAMA's relations.jsonl"):
        data.read_lama(root / "TREx" / "P19.jsonl", TOK)
    with pytest.raises(ValueError, match="a folder without LAMA's"):
        data.read_lama(tmp_path, TOK)


def test_the_lama_data_here_reads_whole_with_each_group_counted(evaldata_dir, gpt2_tokenizer_dir):
    """../shared/evaldata/lama as the LAMA download lays it out: every Google-RE (5,528) and T-REx
    (22,881) record gives a fact or a skip; ConceptNet gives one a masked sentence."""
    tok = minigpt.Tokenizer.from_pretrained(gpt2_tokenizer_dir)
    facts, skipped = data.read_lama(evaldata_dir / "lama", tok)
    counts = {g: sum(f.group == g for f in facts) + sum(s["group"] == g for s in skipped)
              for g in ("Google-RE", "T-REx", "ConceptNet")}
    assert counts == {"Google-RE": 5528, "T-REx": 22881, "ConceptNet": 146}
    assert len({f.relation for f in facts if f.group == "T-REx"}) == 28
    born = next(f for f in facts if f.group == "Google-RE" and f.relation == "place_of_birth")
    assert born.prompt.endswith(" was born in") and len(tok.encode(" " + born.obj)) == 1


def test_lama_files_without_a_usable_fact_are_refused(tmp_path):
    path = write_lama(tmp_path / "multi.jsonl", [{"masked_sentences": ["the b [MASK]"], "obj_label": "ab"}])
    with pytest.raises(ValueError, match="no fact with a one-token object .*object 'ab' is 2 tokens"):
        data.read_lama(path, TOK)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"masked_sentences": "a [MASK]", "obj_label": "the"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a LAMA record"):
        data.read_lama(bad, TOK)


# ---------------------------------------------------------------------------------------------
# Against transformers with the original's hooks


def hf_logprobs(reference, folder, ids, additions=None):
    """float64 log-softmax of the logits [pos, vocab]: plain transformers, or steered by the
    original semantics (forward pre-hooks adding coeff * hidden_states[L] at the front)."""
    import torch

    if additions is None:
        model = reference.transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()
    else:
        logits = reference.original_actadd_logits(folder, ids, additions)
    logits = logits.astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)


def test_relevance_figures_equal_transformers_with_pre_hooks(reference, tmp_path):
    reference.write_checkpoint(tmp_path / "m", CONFIG, seed=4)
    model = GPT2.from_pretrained(tmp_path / "m")
    docs = [("d0", "the ab the ba the abab b a the b " * 3), ("d1", "b a the ba a b " * 4)]
    result = likelihood.relevance(model, TOK, docs, tmp_path / "out", plus="the ab", minus=" a", layer=2, coeff=3.0,
                                  words=WORDS, chunk_tokens=12, quantiles=2, progress=False)
    chunks, _ = likelihood.chunk_documents(docs, TOK, 12, WORDS)
    vector = likelihood.topic_vector(model, TOK, "the ab", " a", 3.0, 2, "space")
    additions = [(list(a.tokens), a.coeff, a.layer) for a in vector.additions]
    n = vector.length
    worst, diffs = 0.0, []
    for c, r in zip(chunks, result.records):
        ids = [TOK.bos_token_id, *c.tokens]
        at = np.arange(len(ids) - 1)
        plain = hf_logprobs(reference, tmp_path / "m", ids)[at, ids[1:]][n:]       # the first n predictions masked
        steered = hf_logprobs(reference, tmp_path / "m", ids, additions)[at, ids[1:]][n:]
        assert r["predictions"] == len(ids) - 1 - n
        worst = max(worst, abs(r["unsteered_logprob"] - plain.sum()), abs(r["steered_logprob"] - steered.sum()))
        diffs.append((steered - plain).mean())
        assert r["relevance"] == c.relevance
    assert worst < 1e-3
    print(f"relevance vs transformers: max abs difference of a chunk's summed log-probs {worst:.1e}")
    all_ = result.summary["all"]["perplexity_ratio"]
    assert math.isclose(all_["value"], math.exp(-np.mean(diffs)), rel_tol=1e-4)
    # the interval is the t interval of the chunks' mean differences
    from scipy import stats as sp

    d = np.array(diffs)
    half = sp.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert math.isclose(all_["low"], math.exp(-(d.mean() + half)), rel_tol=1e-4)
    assert math.isclose(all_["high"], math.exp(-(d.mean() - half)), rel_tol=1e-4)
    for name in ("summary.json", "summary.csv", "relevance.png", "results.jsonl"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_knowledge_ranks_and_log_probs_equal_transformers_with_pre_hooks(reference, tmp_path):
    reference.write_checkpoint(tmp_path / "m", CONFIG, seed=9)
    model = GPT2.from_pretrained(tmp_path / "m")
    the = TOK.encode(" the")[0]
    facts = [Fact(i, f"f:{i}", p, "the", the) for i, p in enumerate(
        ["ab ba b a", "the abab the b", "b a the ba ab abab", "a b ab", "abab abab the"])]
    result = likelihood.knowledge(model, TOK, facts, tmp_path / "out", plus="the ab", minus=" a", layer=3, coeff=4.0,
                                  progress=False)
    vector = likelihood.topic_vector(model, TOK, "the ab", " a", 4.0, 3, "space")
    additions = [(list(a.tokens), a.coeff, a.layer) for a in vector.additions]
    hits = {"u": [], "s": []}
    for f, r in zip(facts, result.records):
        ids = [TOK.bos_token_id] + TOK.encode(f.prompt)
        plain = hf_logprobs(reference, tmp_path / "m", ids)[-1]
        steered = hf_logprobs(reference, tmp_path / "m", ids, additions)[-1]
        for kind, lp, key in (("u", plain, "unsteered"), ("s", steered, "steered")):
            rank = int((lp > lp[the]).sum())              # no exact ties among random logits
            assert r[f"rank_{key}"] == rank
            assert abs(r[f"logprob_{key}"] - lp[the]) < 1e-4
            hits[kind].append(rank)
    assert hits["u"] != hits["s"]                         # the steering moved something
    for row in result.summary["rows"]:
        k = row["k"]
        assert row["unsteered"] == np.mean([h < k for h in hits["u"]])
        assert row["steered"] == np.mean([h < k for h in hits["s"]])
        assert math.isclose(row["difference"], row["steered"] - row["unsteered"], abs_tol=1e-12)
    assert [r["k"] for r in result.summary["rows"]] == list(range(1, 11))


# ---------------------------------------------------------------------------------------------
# Runs: resumption, bad input, the commands


def test_relevance_resumes_and_refuses_other_settings(books, tmp_path):
    model, tok = books
    docs = [("d0", "The bride and the groom were married in June. " * 30), ("d1", "The whale swam in the sea. " * 40)]
    kwargs = dict(chunk_tokens=40, progress=False)
    full = likelihood.relevance(model, tok, docs, tmp_path / "a", **kwargs)
    results = tmp_path / "a" / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:3]) + lines[3][:20])          # two records kept, a torn third
    again = likelihood.relevance(model, tok, docs, tmp_path / "a", **kwargs)
    assert again.records == full.records
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()[1:]]
    assert sorted(ids) == list(range(len(full.records)))           # every chunk once
    with pytest.raises(ResumeError, match="coeff: 1.0 in the file, 2.0 now"):
        likelihood.relevance(model, tok, docs, tmp_path / "a", coeff=2.0, **kwargs)


def test_a_corpus_without_relevant_text_says_so(books, tmp_path):
    model, tok = books
    result = likelihood.relevance(model, tok, [("d", "The whale swam in the sea. " * 40)], tmp_path / "o",
                                  chunk_tokens=40, progress=False)
    assert [b["bin"] for b in result.summary["bins"]] == ["0"]
    assert "no chunk has a topic word" in result.summary["notes"][0]
    assert "no chunk has a topic word" in likelihood.relevance_table(result.summary)


def test_bad_runs_name_what_is_wrong(books, tmp_path):
    model, tok = books
    with pytest.raises(ValueError, match="layer 9: this model has blocks 0 to 3 .*layer 1 here"):
        likelihood.relevance(model, tok, [("d", "word " * 300)], layer=9, progress=False)
    with pytest.raises(ValueError, match="no chunk of 100 tokens in the 1 documents"):
        likelihood.relevance(model, tok, [("d", "too short")], progress=False)
    with pytest.raises(ValueError, match="do not fit n_positions=256"):
        likelihood.relevance(model, tok, [("d", "word " * 900)], chunk_tokens=300, progress=False)
    facts = [Fact(0, "f:1", "", "The", tok.encode("The")[0])]
    with pytest.raises(ValueError, match="no fact left to test.*shorter than the steering matrix"):
        likelihood.knowledge(model, tok, facts, progress=False)
    assert likelihood.paper_layer(48) == 16 and likelihood.paper_layer(12) == 4 and likelihood.paper_layer(4) == 1
    assert likelihood.paper_layer(24) == 8 and likelihood.paper_layer(1) == 0


def test_the_commands_print_the_apis_tables(books, tmp_path, capsys):
    model, tok = books
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                            ["The wedding was the talk of the town, and the bride was happy. " * 12,
                             "The ship sailed at dawn and the crew sang. " * 15]))
    assert main(["eval", "relevance", "--model", "tiny-books", "--data", str(docs), "--out", str(tmp_path / "r"),
                 "--chunk-tokens", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    api = likelihood.relevance(model, tok, data.read_documents(docs), None, chunk_tokens=50, progress=False)
    assert likelihood.relevance_table(api.summary) in printed
    lama = write_lama(tmp_path / "lama.jsonl", [{"masked_sentences": ["The captain went to the [MASK] ."],
                                                 "obj_label": "sea"}, {"masked_sentences": ["He looked at the [MASK]"],
                                                                       "obj_label": "whale"}])
    assert main(["eval", "knowledge", "--model", "tiny-books", "--data", str(lama), "--out", str(tmp_path / "k"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    facts, skipped = data.read_lama(lama, tok)
    api = likelihood.knowledge(model, tok, facts, None, skipped=skipped, progress=False)
    assert likelihood.knowledge_table(api.summary) in printed
    assert main(["eval", "knowledge", "--model", "tiny-books", "--data", str(lama), "--out", str(tmp_path / "k2"),
                 "--layer", "7"]) == 2
    assert "layer 7: this model has blocks 0 to 3" in capsys.readouterr().err
