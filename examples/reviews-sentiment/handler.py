#!/usr/bin/env python3
"""Scores the sentiment of one product review with a small word lexicon.

orch runs this as `python3 handler.py` (spec.handler.exec in job.yaml) and sends it one review per
request; see python/orch_handler.py for the protocol. To try it by hand:

    echo '{"id": 1, "item": {"id": 7, "product": "Kettle", "stars": 5, "text": "Love it!"}}' \
        | python3 handler.py

The scoring is deliberately simple (a VADER-like lexicon: word scores, negation, intensifiers,
squashed into [-1, 1]); a real handler would call a model or an API here. Such an I/O-bound handler
would use `@handler(concurrency=4)`, matching spec.handler.concurrency, so that four calls wait at
once. This one is CPU-bound, so it answers one request at a time.
"""

import math
import re
import sys
from pathlib import Path

# orch_handler lives in the repository's python/ directory (stdlib only: copy it next to your
# own handler instead, if you like).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from orch_handler import Permanent, handler  # noqa: E402

LEXICON = {
    # positive
    "love": 3.0, "loves": 3.0, "excellent": 3.0, "fantastic": 3.0, "perfect": 3.0,
    "perfectly": 3.0, "wonderful": 3.0, "best": 3.0, "beautiful": 2.5, "great": 2.5,
    "recommend": 2.0, "happy": 2.0, "pleased": 2.0, "good": 2.0, "nice": 1.5, "solid": 1.5,
    "reliable": 1.5, "sturdy": 1.5, "easy": 1.5, "easily": 1.5, "comfortable": 1.5,
    "quick": 1.0, "fast": 1.0, "quiet": 1.0, "value": 1.0, "works": 1.0, "fine": 0.8,
    "okay": 0.5, "decent": 0.8, "gift": 1.0,
    # negative
    "terrible": -3.0, "awful": -3.0, "horrible": -3.0, "worst": -3.0, "disgusting": -3.0,
    "useless": -3.0, "dangerous": -2.5, "waste": -2.5, "broken": -2.5, "broke": -2.5,
    "avoid": -2.0, "disappointed": -2.0, "regret": -2.0, "poor": -2.0, "cheap": -1.5,
    "flimsy": -2.0, "mediocre": -1.5, "unhelpful": -2.0, "leaks": -1.5, "peeling": -1.5,
    "cracked": -2.0, "rusty": -2.0, "dirty": -2.0, "overheated": -2.0, "loud": -1.0,
    "noisy": -1.0, "slow": -1.0, "hassle": -1.5, "confusing": -1.0, "issues": -1.0,
    "loose": -1.0, "stick": -0.5, "returned": -1.5, "stopped": -1.0, "hot": -0.5,
    "impressed": 2.0, "worth": 1.5, "special": 1.0,
}
NEGATIONS = {"not", "no", "never", "nothing", "don't", "doesn't", "didn't", "isn't", "wasn't",
             "won't", "can't", "cannot", "hardly"}
INTENSIFIERS = {"very": 1.5, "really": 1.5, "extremely": 1.8, "absolutely": 1.8, "so": 1.3,
                "super": 1.5, "highly": 1.5, "completely": 1.5, "bit": 0.5}
NEGATION_SCOPE = 3  # a negation flips the next three words
NEGATION_FACTOR = -0.74  # "not good" is less negative than "bad" is (VADER's constant)
ALPHA = 15.0  # squashing: score / sqrt(score^2 + ALPHA), as in VADER
NEUTRAL_BAND = 0.05

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def sentiment(text):
    """(score in [-1, 1], number of words)."""
    words = WORD.findall(text.lower())
    total = 0.0
    negate_left = 0
    boost = 1.0
    for word in words:
        if word in NEGATIONS:
            negate_left = NEGATION_SCOPE
            continue
        if word in INTENSIFIERS:
            boost = INTENSIFIERS[word]
            continue
        value = LEXICON.get(word, 0.0) * boost
        if negate_left:
            value *= NEGATION_FACTOR
            negate_left -= 1
        total += value
        boost = 1.0
    score = total / math.sqrt(total * total + ALPHA) if total else 0.0
    return score, len(words)


def label(score):
    if score > NEUTRAL_BAND:
        return "positive"
    if score < -NEUTRAL_BAND:
        return "negative"
    return "neutral"


@handler
def score_review(item):
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        # Nothing to score, and retrying will not change that: a permanent error puts the item
        # into out/errors.parquet and the job goes on (tolerance: maxFailedItemsPercent).
        raise Permanent(f"review {item.get('id')} has no text")
    score, words = sentiment(text)
    return {
        "id": item.get("id"),
        "product": item.get("product"),
        "stars": item.get("stars"),
        "sentiment": round(score, 4),
        "label": label(score),
        "words": words,
    }
