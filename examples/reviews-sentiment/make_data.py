#!/usr/bin/env python3
"""Writes reviews.jsonl next to this script: synthetic product reviews, the same every run.

    python3 make_data.py          # 2,000 reviews
    python3 make_data.py 50000    # more, for a bigger run

Each line: {"id": int, "product": str, "stars": 1..5, "text": str}. About 1% of the reviews have
an empty (or blank) text: the handler rejects those as permanent errors, which the job tolerates
(spec.tolerance.maxFailedItemsPercent: 2).
"""

import json
import random
import sys
from pathlib import Path

SEED = 20240611

PRODUCTS = [
    "Aeropress Go", "Bamboo Cutting Board", "Cast Iron Skillet 10in", "Ceramic Pour-Over",
    "Electric Kettle 1.7L", "French Press 34oz", "Hand Coffee Grinder", "Insulated Tumbler",
    "Kitchen Scale", "Knife Sharpener", "Milk Frother", "Nonstick Wok", "Pasta Maker",
    "Rice Cooker 6-cup", "Silicone Spatula Set", "Stand Mixer", "Toaster 2-slice",
    "Vacuum Sealer", "Waffle Iron", "Water Filter Pitcher",
]

OPENERS = {
    5: ["Absolutely love this.", "Excellent purchase.", "Best {p} I have owned.",
        "Fantastic quality.", "Wonderful little {p}.", "Five stars, no question."],
    4: ["Really good overall.", "Very happy with the {p}.", "Solid and reliable.",
        "Nice {p}, works well.", "Good value for the price.", "Pleased with it."],
    3: ["It's okay.", "Does the job.", "Average {p}.", "Mixed feelings about this one.",
        "Fine, nothing special.", "Decent, with some issues."],
    2: ["Not great.", "Disappointed with the {p}.", "Mediocre at best.",
        "Expected better.", "Poor finish on mine.", "Not worth the price."],
    1: ["Terrible.", "Awful {p}, avoid.", "Broke after a week.", "Complete waste of money.",
        "Worst purchase this year.", "Horrible quality."],
}

DETAILS = {
    5: ["It heats fast and cleans up easily.", "Sturdy, beautiful and easy to use.",
        "Works perfectly every single morning.", "Great design and the build is excellent.",
        "My whole family loves it.", "Shipping was quick and the packaging was perfect."],
    4: ["Works well, though the manual is confusing.", "Good build, a bit heavy.",
        "Easy to clean and pretty quiet.", "Comfortable to hold and reliable so far.",
        "Nice design, the lid is a little loose.", "Fast delivery and it works great."],
    3: ["Some parts feel cheap but it works.", "The handle gets hot, otherwise fine.",
        "Took a while to figure out.", "It is smaller than I expected.",
        "Works, but it is noisy.", "Cleaning is a bit of a hassle."],
    2: ["The coating started peeling.", "It is flimsy and the lid doesn't fit.",
        "Slow and loud, not impressed.", "Customer service was unhelpful.",
        "Leaks a little every time.", "The buttons feel cheap and stick."],
    1: ["It stopped working and support never answered.", "Arrived broken and dirty.",
        "Dangerous: the cord overheated.", "Useless, returned it immediately.",
        "Cheap plastic that cracked on day one.", "Rusty after the first wash, disgusting."],
}

CLOSERS = {
    5: ["Highly recommend!", "Would buy again.", "Perfect gift.", ""],
    4: ["Would recommend.", "Happy overall.", "Good buy.", ""],
    3: ["Maybe it's fine for the price.", "Not sure I would buy again.", "It's okay.", ""],
    2: ["Would not recommend.", "I regret it a bit.", "Not worth it.", ""],
    1: ["Do not buy.", "Never again.", "Returned it.", "Avoid."],
}

STARS = [5, 4, 3, 2, 1]
STAR_WEIGHTS = [40, 25, 12, 8, 15]  # the usual J-shape of product reviews
EMPTY_EVERY = 100  # ~1% of the reviews have no text


def review(rng, i):
    product = rng.choice(PRODUCTS)
    stars = rng.choices(STARS, STAR_WEIGHTS)[0]
    if rng.randrange(EMPTY_EVERY) == 0:
        text = rng.choice(["", " ", "   "])
    else:
        # Now and then a reviewer's text is a star off from the rating, as in real data.
        tone = stars
        if rng.random() < 0.1:
            tone = min(5, max(1, stars + rng.choice([-1, 1])))
        parts = [rng.choice(OPENERS[tone]).format(p=product)]
        parts += rng.sample(DETAILS[tone], rng.randint(1, 2))
        parts.append(rng.choice(CLOSERS[tone]))
        text = " ".join(p for p in parts if p)
    return {"id": i, "product": product, "stars": stars, "text": text}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rng = random.Random(SEED)
    out = Path(__file__).resolve().parent / "reviews.jsonl"
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for i in range(1, n + 1):
            f.write(json.dumps(review(rng, i), ensure_ascii=False) + "\n")
    print(f"wrote {n} reviews to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
