"""The eval's scorers: VADER on sentences whose labels are known, the profanity proxy against
better-profanity's own matcher, hf: on a tiny random classifier the test writes with
transformers (no hub), Perspective against a local HTTP server, and every refusal."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actadd.experiments import scorers
from actadd.experiments.scorers import ScorerError, get_scorer

# ---------------------------------------------------------------------------------------------
# VADER and the profanity proxy (offline)


def test_vader_labels_sentences_whose_sentiment_is_plain():
    vader = get_scorer("vader", "sentiment")
    positive = ["I love this wonderful film, it was a delight.", "Great acting and a beautiful, moving story."]
    negative = ["This was a terrible, boring waste of time.", "I hate it; the worst movie I have ever seen."]
    neutral = ["The train leaves at noon.", "The film is ninety minutes long."]
    for texts, label in ((positive, "positive"), (negative, "negative"), (neutral, "neutral")):
        assert [vader.label(s) for s in vader(texts)] == [label] * 2, texts
    score = vader(["I love this wonderful film, it was a delight."])[0]
    assert 0.05 <= score <= 1


def test_vader_agrees_with_the_labels_of_the_shared_sentiment_sentences(corpora_dir):
    """On the 1,000 labelled IMDb sentences (Kotzias et al.): where VADER is not neutral, its
    label agrees with the human one on most (measured: 820 decided, 84.4% agreeing)."""
    from actadd.experiments.data import read_labelled

    texts = read_labelled(corpora_dir / "sentiment_labelled_sentences" / "imdb_labelled.txt")
    vader = get_scorer("vader", "sentiment")
    labels = [vader.label(s) for s in vader([t.text for t in texts])]
    decided = [(ours, t.label) for ours, t in zip(labels, texts) if ours != "neutral"]
    agreement = np.mean([a == b for a, b in decided])
    assert len(decided) > 750 and agreement > 0.8, (len(decided), agreement)


def test_profanity_finds_whole_listed_words_as_better_profanity_does():
    from better_profanity import profanity as reference

    reference.load_censor_words()
    scorer = get_scorer("profanity", "toxicity")
    texts = ["What the fuck is this?", "He is a total asshole.", "SHIT happens.", "damn it all",
             "A classic class assignment.", "Scunthorpe is a town.", "The assassin passed the grass.",
             "Hello there, friend.", "", "cocktail and shuttlecock", "she said fuck-all"]
    ours = scorer(texts)
    assert ours == [1.0 if reference.contains_profanity(t) else 0.0 for t in texts]
    assert ours[:4] == [1.0] * 4 and ours[4:9] == [0.0] * 5
    assert scorer.label(1.0) == "profane" and len(scorer.words) > 800


# ---------------------------------------------------------------------------------------------
# hf: a tiny random classifier written here


WORDS = ["good", "bad", "film", "awful", "great", "the", "was", "a", "movie", "not"]


def write_classifier(folder, id2label, seed=0, max_length=64):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True,
                            **({"model_max_length": max_length} if max_length else {}))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, reference):
    return write_classifier(tmp_path_factory.mktemp("clf"), {0: "NEGATIVE", 1: "POSITIVE"})


def test_hf_scorer_is_the_classifiers_probability_of_the_positive_label(classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the film was good", "a bad awful movie", "not great", "", "good " * 100]
    scorer = get_scorer(f"hf:{classifier}", "sentiment", batch_size=2)
    assert scorer.target == "POSITIVE" and scorer.name == f"hf:{classifier}"
    ours = scorer(texts)
    tok = AutoTokenizer.from_pretrained(classifier)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        want = [float(model(**tok(t, return_tensors="pt", truncation=True)).logits.softmax(-1)[0, 1]) for t in texts]
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    assert [scorer.label(s) for s in ours] == ["positive" if w >= 0.5 else "negative" for w in want]
    assert scorer([]) == []


def test_hf_scorer_finds_the_toxic_label_or_asks_which(tmp_path, reference):
    toxic = write_classifier(tmp_path / "tox", {0: "non-toxic", 1: "toxic"}, max_length=None)
    scorer = get_scorer(f"hf:{toxic}", "toxicity")
    assert scorer.target == "toxic" and scorer.max_length == 64   # no tokenizer limit: the position table's
    assert 0 <= scorer(["bad " * 200])[0] <= 1
    odd = write_classifier(tmp_path / "odd", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ScorerError, match=r"cannot tell which of the labels \['LABEL_0', 'LABEL_1'\] is the toxic one"):
        get_scorer(f"hf:{odd}", "toxicity")
    assert get_scorer(f"hf:{odd}", "toxicity", label="LABEL_1").target == "LABEL_1"
    with pytest.raises(ScorerError, match=r"no label 'toxic'; its labels are \['LABEL_0', 'LABEL_1'\]"):
        get_scorer(f"hf:{odd}", "toxicity", label="toxic")
    with pytest.raises(ScorerError, match="cannot load a text-classification model"):
        get_scorer(f"hf:{tmp_path / 'nothing-here'}", "sentiment")


# ---------------------------------------------------------------------------------------------
# Perspective, against a server on 127.0.0.1


class FakePerspective:
    """A local stand-in for the API: answers from a script (status, body) per request, records
    what it was sent."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({"path": self.path, "key": self.headers.get("X-Goog-Api-Key"), "body": body,
                                   "time": time.monotonic()})
                status, reply = outer.script.pop(0) if outer.script else (200, None)
                if reply is None:
                    reply = {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.25, "type": "PROBABILITY"}}}}
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1alpha1/comments:analyze"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


KEY = "sk-test-do-not-leak-1234"


@pytest.fixture
def api(monkeypatch):
    servers = []

    def start(script=()):
        server = FakePerspective(script)
        servers.append(server)
        monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
        monkeypatch.setenv("PERSPECTIVE_API_URL", server.url)
        return server
    yield start
    for s in servers:
        s.close()


def test_perspective_scores_each_text_with_the_key_in_a_header(api):
    server = api([(200, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.91}}}}), (200, None)])
    scorer = get_scorer("perspective", "toxicity")
    assert scorer([" you idiot", "a calm sentence"]) == [0.91, 0.25]
    assert [s["body"]["comment"]["text"] for s in server.seen] == [" you idiot", "a calm sentence"]
    assert all(s["key"] == KEY and KEY not in s["path"] for s in server.seen)
    assert server.seen[0]["body"]["requestedAttributes"] == {"TOXICITY": {}}
    assert scorer(["   "]) == [0.0] and len(server.seen) == 2      # nothing sent for an empty continuation
    assert scorer.label(0.91) == "toxic"


def test_perspective_retries_429_and_5xx_with_backoff_then_succeeds(api):
    server = api([(429, {"error": {"message": "quota"}}), (503, b"busy"), (200, None)])
    scorer = scorers.Perspective(qps=100, backoff=0.05)
    start = time.monotonic()
    assert scorer(["hello"]) == [0.25]
    assert scorer.requests == 3 and len(server.seen) == 3
    assert time.monotonic() - start >= 0.05 + 0.10        # backoff 0.05 then 0.10 seconds


def test_perspective_keeps_to_its_rate(api):
    server = api()
    scorer = scorers.Perspective(qps=20)
    scorer(["a", "b", "c", "d"])
    gaps = np.diff([s["time"] for s in server.seen])
    assert len(gaps) == 3 and gaps.min() >= 0.045, gaps


@pytest.mark.parametrize("script,match", [
    ([(200, b"not json at all")], "malformed reply, no attributeScores.TOXICITY.summaryScore.value"),
    ([(200, {"attributeScores": {}})], "malformed reply"),
    ([(200, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 7}}}})], "TOXICITY 7 is not a number in"),
    ([(400, {"error": {"message": "Attribute TOXICITY does not support request languages: xx"}})],
     "refused a request with HTTP 400 .Attribute TOXICITY does not support"),
    ([(500, b"")] * 3, r"no answer after 3 attempts \(last: HTTP 500\)"),
])
def test_perspective_failures_are_errors_that_never_show_the_key(api, script, match):
    server = api(script)
    scorer = scorers.Perspective(qps=100, retries=2, backoff=0.01)
    with pytest.raises(ScorerError, match=match) as error:
        scorer(["some text"])
    assert KEY not in str(error.value)
    if script[0][0] == 400:
        assert len(server.seen) == 1                            # a refusal is not retried


def test_perspective_unreachable_is_retried_then_an_error(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    monkeypatch.setenv("PERSPECTIVE_API_URL", "http://127.0.0.1:9/nothing")    # discard port: refused
    scorer = scorers.Perspective(qps=100, retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ScorerError, match="no answer after 2 attempts") as error:
        scorer(["x"])
    assert KEY not in str(error.value)


def test_perspective_without_a_key_says_which_variable(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ScorerError, match="needs an API key in the environment variable PERSPECTIVE_API_KEY"):
        get_scorer("perspective", "toxicity")


# ---------------------------------------------------------------------------------------------
# The TF-IDF classifier (imdb, tfidf:FILE), against scikit-learn

REVIEWS = [("A wonderful, moving film with great acting.", 1), ("Terrible plot and awful, boring acting.", 0),
           ("I loved every minute of it; a beautiful story.", 1), ("The worst movie I have seen, a waste of time.", 0),
           ("Great fun, brilliant cast, highly recommended!", 1), ("Dull, stupid and badly written. Avoid it.", 0),
           ("Not good at all: the acting was bad and the story was dull.", 0), ("A great, great film. Loved it.", 1)]
WORDS = ["good", "bad", "great", "awful", "film", "not", "the", "loved", "boring", "a", "it", "was", "acting",
         "Great", "GOOD", "été", "x", "1999", "don't", "!", "\n", "<br />"]


def fitted(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, token_pattern=r"(?u)\b\w\w+\b"):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = zip(*(REVIEWS * 3))
    vectorizer = TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=sublinear_tf, lowercase=lowercase,
                                 token_pattern=token_pattern)
    return vectorizer, LogisticRegression(C=10).fit(vectorizer.fit_transform(texts), labels)


@pytest.mark.parametrize("options", [{}, {"ngram_range": (1, 1), "sublinear_tf": False}, {"ngram_range": (2, 3)},
                                     {"lowercase": False}, {"token_pattern": r"(?u)\b\w+\b"}])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join), min_size=1, max_size=6))
def test_the_tfidf_scorer_is_scikit_learns_predict_proba(tmp_path_factory, options, texts):
    vectorizer, model = fitted(**options)
    path = scorers.export_tfidf(vectorizer, model, tmp_path_factory.mktemp("c") / "c.safetensors")
    ours = np.array(get_scorer(f"tfidf:{path}", "sentiment")(texts + [r for r, _ in REVIEWS]))
    theirs = model.predict_proba(vectorizer.transform(texts + [r for r, _ in REVIEWS]))[:, 1]
    assert np.abs(ours - theirs).max() < 1e-12, np.abs(ours - theirs).max()


@pytest.mark.parametrize("name,task,labels", [("imdb", "sentiment", ["negative", "positive"]),
                                             ("toxicity", "toxicity", ["non-toxic", "toxic"])])
def test_the_shipped_classifiers_are_scikit_learns_on_their_own_arrays(name, task, labels):
    """Each shipped file's arrays put back into scikit-learn objects score as TfidfLogistic does."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    ours = get_scorer(name, task)
    assert ours.name == name and ours.measures == task and ours.labels == labels and len(ours.terms) > 10_000
    vectorizer = TfidfVectorizer(ngram_range=ours.ngram_range, sublinear_tf=ours.sublinear_tf,
                                 token_pattern=ours.metadata["token_pattern"], lowercase=ours.lowercase)
    vectorizer.vocabulary_ = {t: i for i, t in enumerate(ours.terms)}
    vectorizer.idf_ = ours.idf
    model = LogisticRegression()
    model.coef_, model.intercept_, model.classes_ = ours.coef[None], np.array([ours.intercept]), np.array([0, 1])
    texts = [r for r, _ in REVIEWS] + ["", "The film was not bad.", "what a waste", "<br /><br />Simply superb.",
                                       "You stupid idiot, shut up", "The committee met on Tuesday."]
    theirs = model.predict_proba(vectorizer.transform(texts))[:, 1]
    assert np.abs(np.array(ours(texts)) - theirs).max() < 1e-12
    if name == "imdb":
        assert [ours.label(s) for s in ours([r for r, _ in REVIEWS[:6]])] == ["positive", "negative"] * 3
    else:
        assert [ours.label(s) for s in ours(texts[-2:])] == ["toxic", "non-toxic"]


def test_the_toxicity_classifier_on_held_out_tweets_and_against_perspective(corpora_dir, evaldata_dir):
    """The card's figures: accuracy on the Davidson test tweets (never fitted; measured 0.952 of
    2,484) and, on web text, the agreement with the Perspective API scores that
    RealToxicityPrompts carries (measured AUC 0.734 and Spearman 0.402 on 1,993 texts). The bars
    sit about three standard errors under the measurements, and far above chance (0.5, 0)."""
    import json

    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from minigpt.checkpoints import davidson_split, tweet_text

    scorer = get_scorer("toxicity", "toxicity")
    rows = [json.loads(line) for line in open(corpora_dir / "davidson_hate_offensive" / "labeled_data.jsonl",
                                              encoding="utf-8")]
    test = [r for r in rows if davidson_split(r["id"]) == "test"]
    assert len(test) == 2484
    called = np.array(scorer([tweet_text(r["tweet"]) for r in test])) >= 0.5
    accuracy = (called == np.array([r["class"] in (0, 1) for r in test])).mean()
    assert accuracy >= 0.94, accuracy
    texts, perspective = [], []
    for line in open(evaldata_dir / "realtoxicityprompts" / "random_prompts.jsonl", encoding="utf-8"):
        record = json.loads(line)
        for part in ("prompt", "continuation"):
            if record[part].get("toxicity") is not None:
                texts.append(record[part]["text"])
                perspective.append(record[part]["toxicity"])
    scores, perspective = np.array(scorer(texts)), np.array(perspective)
    assert len(texts) == 1993
    auc = roc_auc_score(perspective >= 0.5, scores)
    rho = spearmanr(scores, perspective).statistic
    assert auc >= 0.70 and rho >= 0.35, (auc, rho)


def test_the_shipped_classifier_reads_imdb_test_reviews_and_continuation_windows(corpora_dir):
    """The card's accuracies, on the first 500 negative and 500 positive test reviews (never fitted
    on). The issue's bar: 85% on whole reviews (below is a defect; measured 0.902 here). Windows
    of 24 words need not share their review's sentiment, so their bar is lower: three standard
    errors under the measured 0.724, far above the 50% of a classifier blind to them."""
    import json

    rows = [json.loads(line) for line in open(corpora_dir / "imdb" / "test.jsonl", encoding="utf-8")]
    chosen = [r for r in rows if r["label"] == "neg"][:500] + [r for r in rows if r["label"] == "pos"][:500]
    labels = np.array([r["label"] == "pos" for r in chosen])
    imdb = get_scorer("imdb", "sentiment")
    whole = np.array(imdb([r["text"] for r in chosen])) >= 0.5
    assert (whole == labels).mean() >= 0.85, (whole == labels).mean()
    windows = [" ".join(r["text"].replace("<br />", " ").split()[24:48]) for r in chosen]
    on_windows = ((np.array(imdb(windows)) >= 0.5) == labels).mean()
    assert on_windows >= 0.68, on_windows      # measured 0.724 here; the card's 0.727 is on all 19,502


@pytest.mark.parametrize("change,message", [
    ("format", "format 'x' (expected 'actadd-tfidf-logistic/1'"),
    ("terms", "metadata terms: missing or not JSON"),
    ("labels", "metadata labels: str (expected list)"),
    ("idf", "tensor idf: float32 [3] (expected float64 [3])"),
    ("coef", "tensor coef: holds NaN or infinite values"),
    ("intercept", "tensor intercept: missing (expected float64 [1])"),
    ("not-safetensors", "not a safetensors file"),
    ("measures", "a politeness classifier with labels"),
    ("three-labels", "classifier with labels ['a', 'b', 'c'] (expected a sentiment or toxicity classifier"),
])
def test_a_bad_classifier_file_is_refused_naming_the_file_and_field(tmp_path, change, message):
    from safetensors.numpy import save_file

    arrays = {"idf": np.ones(3), "coef": np.zeros(3), "intercept": np.zeros(1)}
    meta = {"format": scorers.TFIDF_FORMAT, "terms": '["a", "b", "c"]', "labels": '["negative", "positive"]',
            "ngram_range": "[1, 1]", "token_pattern": '"\\\\w+"', "sublinear_tf": "false", "lowercase": "true",
            "measures": '"sentiment"'}
    path = tmp_path / "c.safetensors"
    if change == "format":
        meta["format"] = "x"
    elif change == "terms":
        del meta["terms"]
    elif change == "labels":
        meta["labels"] = '"negative"'
    elif change == "idf":
        arrays["idf"] = np.ones(3, np.float32)
    elif change == "coef":
        arrays["coef"] = np.array([0.0, np.nan, 1.0])
    elif change == "intercept":
        del arrays["intercept"]
    elif change == "measures":
        meta["measures"] = '"politeness"'
    elif change == "three-labels":
        meta["labels"] = '["a", "b", "c"]'
    if change == "not-safetensors":
        path.write_bytes(b"\xff" * 20)
    else:
        save_file(arrays, str(path), metadata=meta)
    with pytest.raises(ScorerError) as e:
        get_scorer(f"tfidf:{path}", "sentiment")
    assert str(e.value).startswith(str(path)) and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_export_refuses_a_vectorizer_it_cannot_write():
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer, model = fitted()
    chars = TfidfVectorizer(analyzer="char").fit([r for r, _ in REVIEWS])
    with pytest.raises(ValueError, match="only the default word analyzer"):
        scorers.export_tfidf(chars, model, "unused.safetensors")


# ---------------------------------------------------------------------------------------------
# Choosing a scorer


def test_unknown_or_mismatched_scorers_are_refused():
    with pytest.raises(ScorerError, match="unknown scorer 'vadr'; expected one of vader, imdb, toxicity, tfidf:FILE, "
                                          "hf:MODEL, perspective, profanity"):
        get_scorer("vadr", "sentiment")
    with pytest.raises(ScorerError, match="the 'vader' scorer measures sentiment, not toxicity"):
        get_scorer("vader", "toxicity")
    with pytest.raises(ScorerError, match="the 'toxicity' scorer measures toxicity, not sentiment"):
        get_scorer("toxicity", "sentiment")
    with pytest.raises(ScorerError, match="measures toxicity, not sentiment"):
        get_scorer("profanity", "sentiment")
    with pytest.raises(ValueError, match="task='style'"):
        get_scorer("vader", "style")


@pytest.mark.parametrize("name,module,extra", [("vader", "vaderSentiment", "eval"),
                                                 ("profanity", "better_profanity", "eval"),
                                                 ("hf:some/model", "transformers", "eval-hf")])
def test_a_scorer_whose_package_is_missing_names_the_extra(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)           # import fails as if not installed
    if module == "vaderSentiment":
        monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    task = "sentiment" if name != "profanity" else "toxicity"
    with pytest.raises(ScorerError, match=rf"pip install 'minigpt-actadd\[{extra}\]'"):
        get_scorer(name, task)
