"""Writes sample_data/train.csv and test.csv: short customer-support messages in three classes.

The sentences are composed by this script from hand-written phrases (no outside data), with a fixed seed,
so the files are reproducible: python sample_data/generate.py"""

import csv
import random
from pathlib import Path

OPENERS = [
    "",
    "",
    "hi, ",
    "hello, ",
    "hey team, ",
    "good morning, ",
    "urgent: ",
    "quick question: ",
    "sorry to bother you, ",
]
CLOSERS = ["", "", "", " thanks", " please help", " thank you!", " any update?", " this is frustrating", " cheers"]

PHRASES = {
    "billing": [
        "I was charged twice for my subscription",
        "my invoice shows the wrong amount",
        "please refund the payment from last week",
        "why did my card get billed again",
        "the discount code was not applied to my order total",
        "I need a copy of my receipt for taxes",
        "cancel my plan and stop charging me",
        "there is an unknown charge on my credit card statement",
        "can I pay by bank transfer instead of card",
        "my refund still has not arrived",
        "the price went up without any notice",
        "update the billing address on my account",
        "I was billed for a month I did not use",
        "how do I change my payment method",
        "the checkout took my money but shows an error",
    ],
    "delivery": [
        "my package has not arrived yet",
        "the tracking number does not work",
        "the parcel was left at the wrong address",
        "where is my order, it is a week late",
        "the courier said delivered but nothing is here",
        "can you ship to a different address",
        "the box arrived damaged and crushed",
        "I only received half of the items I ordered",
        "when will my shipment be dispatched",
        "delivery was missed and I want to reschedule",
        "the driver never rang the doorbell",
        "is express shipping available to my city",
        "my order is stuck in customs",
        "the wrong item was delivered to me",
        "tracking has not updated in five days",
    ],
    "technical": [
        "the app crashes when I open settings",
        "I cannot log in, the password reset email never comes",
        "the website shows an error 500 on checkout page",
        "sync stopped working after the last update",
        "the screen freezes when I upload a photo",
        "two factor codes are rejected every time",
        "the desktop version will not install on windows",
        "notifications stopped working on my phone",
        "the page loads forever and then times out",
        "export to pdf produces a blank file",
        "my account settings do not save",
        "the search button does nothing when I click it",
        "the bluetooth pairing fails with the device",
        "after updating the firmware it keeps rebooting",
        "the api returns an invalid token error",
    ],
}
DETAILS = {
    "billing": ["on my visa", "for order 4411", "this month", "from the annual plan", "in euros", "twice now"],
    "delivery": ["for order 4411", "since monday", "to my office", "with the blue box", "from the warehouse", "again"],
    "technical": ["on android", "on my iphone", "since yesterday", "in chrome", "on the new version", "again"],
}


def make(label: str, rng: random.Random) -> str:
    text = rng.choice(PHRASES[label])
    if rng.random() < 0.5:
        text += " " + rng.choice(DETAILS[label])
    text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main() -> None:
    rng = random.Random(20261121)
    rows = [(make(label, rng), label) for label in PHRASES for _ in range(160)]
    rng.shuffle(rows)
    seen, unique = set(), []
    for text, label in rows:
        if text not in seen:
            seen.add(text)
            unique.append((text, label))
    here = Path(__file__).parent
    write(here / "train.csv", unique[:360])
    write(here / "test.csv", unique[360:480])


if __name__ == "__main__":
    main()
