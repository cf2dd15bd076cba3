"""What the paper says, version by version, and the rule that judges our figures against it.

    VERSIONS   the paper's versions this code quotes, each with its source
    PRESETS    each version's sentiment and toxicity settings (`actadd paper --preset`)
    QUOTED     the paper's reported tables, figure by figure, with version and source
    CLAIMS     one claim per row of REPORT.md's claims table: what is claimed, which of our
               paired estimates tests it, in which direction, against which bound
    judge      the verdict rule, stated once in RULE

Every figure here is copied from ../shared/REFERENCE.md sections 6 and 6b (which name where
each was read); tests/test_claims.py holds them to that file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

VERSIONS = {
    "v5": "arXiv 2308.10248v5 (October 2024): the authors' experiment notebooks for LLaMA-3-8B (republished in "
          "Meng3www/ActAdd) and scripts for GPT-2-XL (montemac/activation_additions, branch "
          "scripting/initial-paper-experiments)",
    "iclr2025": "the ICLR 2025 submission (OpenReview 2XBPdPIcFK), text as converted by a co-author "
                "(g-leech/argmin-gravitas, files/papers/activation-addition.md); LLaMA-3.1-8B",
}


@dataclass(frozen=True)
class Preset:
    """One version's sentiment and toxicity settings. Layers are given as (layer, of blocks) and
    rescaled to the model's depth at run time (likelihood.paper_layer)."""

    version: str
    model: str
    sentiment_layer: tuple[int, int]
    sentiment_coeff: float
    toxicity_layer: tuple[int, int]
    toxicity_coeff: float
    sampling: dict
    sentiment_new_tokens: int
    toxicity_new_tokens: int
    sentiment_prompts: int           # per direction
    toxicity_prompts: int
    sentiment_scorer: str
    toxicity_scorer: str
    fluency: str                     # the paper's fluency judge, in words
    sentiment_notes: tuple[str, ...] = field(default_factory=tuple)
    toxicity_notes: tuple[str, ...] = field(default_factory=tuple)


PRESETS = {
    "v5": Preset(
        version="v5", model="meta-llama/Meta-Llama-3-8B",
        sentiment_layer=(17, 32), sentiment_coeff=12.0, toxicity_layer=(17, 32), toxicity_coeff=2.0,
        sampling={"temperature": 1.0, "top_p": 0.3, "freq_penalty": 1.0}, sentiment_new_tokens=64,
        toxicity_new_tokens=32, sentiment_prompts=1000, toxicity_prompts=1000,
        sentiment_scorer="hf:siebert/sentiment-roberta-large-english", toxicity_scorer="perspective",
        fluency="davinci-002's perplexity (an API that no longer exists; here the model's own, unsteered)",
        sentiment_notes=("The notebooks steer NegToPos only (coefficient 12); PosToNeg here is the reversed pair at "
                         "the same layer and coefficient.",
                         "The notebooks use IMDb negatives from train and test; the version's prompt count (1,000 per "
                         "direction) follows the PREADD protocol they cite; here the first prompts of each sentiment "
                         "in the test file, as many as the table's n."),
        toxicity_notes=("The prompts: PREADD's 1,000 random RealToxicityPrompts (the first of them, as many as the "
                        "table's n), one continuation each.",)),
    "iclr2025": Preset(
        version="iclr2025", model="meta-llama/Llama-3.1-8B",
        sentiment_layer=(6, 32), sentiment_coeff=3.0, toxicity_layer=(6, 32), toxicity_coeff=3.0,
        sampling={"temperature": 1.0, "top_p": 1.0, "freq_penalty": 1.0}, sentiment_new_tokens=64,
        toxicity_new_tokens=32, sentiment_prompts=1000, toxicity_prompts=2000,
        sentiment_scorer="hf:cardiffnlp/twitter-roberta-base-sentiment-latest", toxicity_scorer="perspective",
        fluency="LLaMA-3.1-8B's perplexity (here the model's own, unsteered: the same when --model is LLaMA-3.1-8B)",
        sentiment_notes=("The ICLR text gives no continuation length; the notebooks' 64 tokens are used.",
                         "Its 'random subset' of 1,000 IMDb reviews is here the first reviews of each sentiment in the "
                         "data file given, as many as the table's n."),
        toxicity_notes=("The ICLR text gives no continuation length; the notebooks' 32 tokens are used.",
                        "Its random subset of 2,000 RealToxicityPrompts is here the first prompts of the file given, "
                        "as many as the table's n (PREADD's file holds 1,000).")),
}


# ---------------------------------------------------------------------------------------------
# The paper's reported figures

@dataclass(frozen=True)
class Quoted:
    """A table as the paper reports it: rows of (method, figures...), the figures as printed,
    with its version and source."""

    version: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    source: str
    run_here: tuple[str, ...] = ("unsteered", "ActAdd", "prompted")   # the rows we also run


ICLR_SOURCE = "ICLR 2025 submission (OpenReview 2XBPdPIcFK), its sentiment and toxicity tables"
QUOTED = {
    "sentiment": Quoted(
        "iclr2025", "Sentiment, IMDb, n = 1,000, Twitter-roBERTa; LLaMA-3.1-8B, l = 6, c = 3",
        ("method", "PosToNeg success", "disfluency", "NegToPos success", "disfluency"),
        (("unsteered", "0.207", "17.23", "0.200", "18.49"), ("ActAdd", "0.395", "29.18", "0.349", "29.30"),
         ("prompted", "0.265", "17.94", "0.246", "18.36"), ("LMA", "0.423", "16.74", "0.378", "16.69"),
         ("LMA + classifier", "0.471", "17.01", "0.459", "17.51"), ("SelfDebias", "0.275", "18.46", "0.236", "20.35"),
         ("FUDGE", "0.367", "17.93", "0.302", "19.75"), ("PreADD", "0.420", "19.30", "0.339", "19.05")), ICLR_SOURCE),
    "toxicity": Quoted(
        "iclr2025", "Toxicity, Perspective API (lower is better); LLaMA-3.1-8B, l = 6, c = 3",
        ("method", "RealToxicityPrompts", "disfluency", "/pol/", "disfluency"),
        (("unsteered", "0.127", "16.0", "0.323", "19.3"), ("ActAdd", "0.101", "20.4", "0.305", "48.0"),
         ("FUDGE", "0.103", "16.2", "0.269", "20.5"), ("LMA", "0.104", "15.8", "0.232", "17.9"),
         ("LMA + classifier", "0.090", "16.1", "0.205", "18.7"), ("SelfDebias", "0.123", "18.2", "0.299", "22.8"),
         ("PreADD", "0.099", "16.7", "0.234", "19.3")), ICLR_SOURCE, run_here=("unsteered", "ActAdd")),
}


# ---------------------------------------------------------------------------------------------
# The claims and the rule

@dataclass(frozen=True)
class Claim:
    """One row of the claims table: `estimate` names the paired estimate in paper.json that tests
    it; the claim is that its true value lies `side` ("above" or "below") `bound`."""

    key: str
    what: str
    paper: str          # the paper's figure, quoted, with its version
    estimate: str       # the report's key for our estimate (see paper.claim_estimates)
    side: str
    bound: float = 0.0
    unit: str = ""      # how the estimate is written: "pp" (a difference of rates), "ratio", "pct", ""
    experiment: str = ""  # the report's experiment it comes from (whose model it was run on); default `key`


HARM = {"perplexity_ratio": 1.05, "p_at_1": -0.02, "overhead": 0.004}   # our bounds for "no harm" claims

CLAIMS = (
    Claim("topic", "Topic steering: the wedding vector puts weddings into completions, from the first layer on",
          "GPT-2-XL: > 90% of completions on topic at the best layer against ~2% unsteered (v5)",
          "topic_first", "above", unit="pp"),
    Claim("relevance", "Perplexity by relevance: the steered model predicts wedding-related text better",
          "GPT-2-XL, layer 16: perplexity ratio falls with relevance (a figure; no number) (v5)",
          "relevance_relevant", "below", 1.0, unit="ratio"),
    Claim("unrelated", "... and text with no wedding word is not harmed (ratio at most 1.05)",
          "GPT-2-XL: unrelated text unaffected (a figure; no number) (v5)",
          "relevance_zero", "below", HARM["perplexity_ratio"], unit="ratio", experiment="relevance"),
    Claim("knowledge", "General knowledge is preserved: P@1 on LAMA's facts falls by less than 0.02",
          "GPT-2-XL: 'negligible impact' on P@K (a figure; no number) (v5, ICLR)",
          "knowledge_p1", "above", HARM["p_at_1"], unit="pp"),
    Claim("overhead", "Overhead: steering costs less than 0.4% of a forward pass",
          "gpt2 .. gpt2-xl, opt-125m .. opt-2.7b: premium below 0.4% at every size (arXiv v1/v2)",
          "overhead_forward", "below", HARM["overhead"], unit="pct"),
    Claim("neg_to_pos", "Sentiment NegToPos: more continuations of negative reviews are positive",
          "LLaMA-3.1-8B: 0.200 -> 0.349 (ICLR); LLaMA-3-8B ActAdd 0.669 (v5, secondary notes)",
          "sentiment_neg_to_pos", "above", unit="pp", experiment="sentiment"),
    Claim("pos_to_neg", "Sentiment PosToNeg: more continuations of positive reviews are negative",
          "LLaMA-3.1-8B: 0.207 -> 0.395 (ICLR)", "sentiment_pos_to_neg", "above", unit="pp", experiment="sentiment"),
    Claim("toxicity", "Toxicity: continuations of RealToxicityPrompts score less toxic",
          "LLaMA-3.1-8B: 0.127 -> 0.101 (ICLR); LLaMA-3-8B 0.114 -> 0.108 (v5, secondary notes)",
          "toxicity_mean", "below", unit=""),
    Claim("fluency", "Fluency cost: steered continuations are less fluent (perplexity rises)",
          "LLaMA-3.1-8B NegToPos disfluency 18.49 -> 29.30 (ICLR)", "fluency_neg_to_pos", "above", unit="", experiment="sentiment"),
)

POWER = 0.8
_Z = NormalDist().inv_cdf(0.975)
DETECTABLE = (_Z + NormalDist().inv_cdf(POWER)) / _Z     # x the half-width: 1.4294 (2.80 / 1.96 rounded)
RULE = ("**Verdicts** are computed, never written by hand: *reproduced* where our 95% paired interval lies wholly "
        "on the claimed side (of zero for an effect; of the stated bound for a claim of no harm), *contradicted* "
        "where it lies wholly on the other side, *inconclusive* otherwise, with the smallest effect this n could "
        f"have detected: ({POWER:.0%} power, two-sided 5%, normal approximation) (z(0.975) + z({POWER:.2f})) / "
        f"z(0.975) = {DETECTABLE:.4f} x the interval's half-width, from the bound. An interval of no width (every "
        "pair equal, e.g. P@1 0 steered and unsteered) is inconclusive: nothing varied to judge by. Bounds of no harm (the paper gives none): perplexity ratio 1.05, "
        "P@1 down 0.02, overhead 0.4% (the paper's own axis).")


def judge(estimate: dict | None, side: str, bound: float = 0.0, confidence: float = 0.95,
          power: float = POWER) -> dict:
    """The verdict on a claim that the true value lies `side` ("above" or "below") `bound`, from
    our estimate's interval ({value, low, high, n}): reproduced, contradicted or inconclusive,
    and `detectable`, the smallest distance from the bound this interval's width could have
    detected with `power` (meaningful for an inconclusive verdict)."""
    if side not in ("above", "below"):
        raise ValueError(f"side={side!r}: expected 'above' or 'below'")
    if estimate is None or any(not _finite(estimate.get(k)) for k in ("low", "high")):
        return {"verdict": "not run", "detectable": None}
    low, high = estimate["low"], estimate["high"]
    if low == high:                                   # every pair equal: nothing was measured, e.g. no knowledge to lose
        return {"verdict": "inconclusive", "detectable": 0.0}
    claimed, other = (low > bound, high < bound) if side == "above" else (high < bound, low > bound)
    verdict = "reproduced" if claimed else "contradicted" if other else "inconclusive"
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = (high - low) / 2
    return {"verdict": verdict, "detectable": half * (z + NormalDist().inv_cdf(power)) / z}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
