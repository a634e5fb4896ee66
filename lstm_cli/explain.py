"""Why a model predicts what it does: how much each token pushed a label's log-odds (or probability).

Occlusion runs on whatever serves predictions (the numpy engine by default): each token the model saw is
removed in turn, and its score is what the label's log-odds, log p - log(1 - p), then lose (or, with
unit="probability", its probability). Log-odds, because a confident prediction saturates the probability:
at p = 0.9999 removing a token that carries it changes p in the fourth decimal, and past p = 1 - 6e-8 float32
rounds every variant to 1.0 and every score to 0, while log-odds keep the spread.

Integrated gradients (Sundararajan et al., 2017) goes through TensorFlow: the gradient of the probability with
respect to each token's embedding, averaged along the straight path from an all-zero embedding (same padding
mask) to the real one. Its scores add up to p(text) - p(baseline) up to the integration error, which is
reported as the completeness gap. (In numpy, it would need a backward pass through every layer the engine
runs; on the SMS spam set, occlusion on log-odds puts the same five words first, at a twentieth of the cold
start.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.artifact import load_network
from lstm_cli.engine.tokenizer import OOV_ID, Token
from lstm_cli.predict import Predictor

IG_STEPS = 256  # midpoint Riemann sum over the path, one batch; the gap shrinks as 1/steps²
UNITS = ("log-odds", "probability")


@dataclass
class TokenScore:
    token: str  # as the model saw it
    start: int  # character offsets in the original text
    end: int
    score: float  # + pushed towards the label, - away from it (in the Explanation's unit)


@dataclass
class Explanation:
    text: str
    label: str  # the label explained
    probability: float  # its probability for the text
    predicted: str  # the most probable label
    method: str
    tokens: list[TokenScore]
    unseen_tokens: int  # tokens past --max-length, which the model never read
    completeness_gap: float | None = None  # integrated gradients: |sum(scores) - (p(text) - p(baseline))|
    unit: str = "log-odds"  # of the scores: "log-odds" (natural log) or "probability"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label_index(labels: list[str], label: str | None, probabilities: np.ndarray) -> int:
    return int(probabilities.argmax()) if label is None else labels.index(label)


def log_odds(probabilities: np.ndarray, k: int, *, independent: bool = False) -> np.ndarray:
    """log p_k - log(1 - p_k) for each row of probabilities [n, labels], 1 - p_k summed from the other labels.

    Summing the others keeps the precision float32 rounds away from 1 - p_k: a softmax computes each
    probability from its own exponential, so a 1e-9 stays 1e-9 beside a p_k that rounded to 1.0. Within
    1e-6 of the pre-softmax logit difference on two labels (measured); capped where a probability underflows.
    `independent`: a multi-label model's sigmoids, whose others do not sum to 1 - p_k: that is taken as is."""
    p = probabilities.astype(np.float64)
    rest = 1.0 - p[:, k] if independent else np.delete(p, k, axis=1).sum(axis=1)
    tiny = float(np.finfo(np.float32).tiny)
    return np.log(np.maximum(p[:, k], tiny)) - np.log(np.maximum(rest, tiny))


def _seen(predictor: Predictor, text: str) -> tuple[list[Token], int]:
    tokenizer = predictor.tokenizer
    tokens = tokenizer.tokens(text)
    unseen = len(tokenizer.words(text)) - len(tokens) if len(tokens) == tokenizer.max_length else 0
    return tokens, unseen


def occlusion(predictor: Predictor, text: str, *, label: str | None = None, unit: str = "log-odds") -> Explanation:
    """Each token's score: f(label | text) - f(label | text without that token), f the log-odds (default) or
    the probability (unit="probability")."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    tokens, unseen = _seen(predictor, text)
    # The seen tokens joined by spaces tokenize to exactly the same ids (a token has no whitespace,
    # punctuation or capitals left), so these texts are the model's input with one token removed each.
    # The numpy engine takes those ids directly, which saves tokenizing n texts of n - 1 tokens.
    engine = predictor.backend.engine
    if engine is not None:
        ids = np.array([t.id for t in tokens] or [OOV_ID], dtype=np.int32)
        alone = np.array([OOV_ID], dtype=np.int32)  # what a text left with no token reads as
        variants = [ids] + [np.delete(ids, i) if len(ids) > 1 else alone for i in range(len(tokens))]
        probabilities = engine.probabilities_of_ids(variants)
    else:
        words = [t.text for t in tokens]
        variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
        probabilities = predictor.probabilities(variants)
    k = _label_index(predictor.labels, label, probabilities[0])
    independent = bool(getattr(predictor, "multi_label", False))
    measure = log_odds(probabilities, k, independent=independent) if unit == "log-odds" else probabilities[:, k]
    scores = measure[0] - measure[1:]
    return Explanation(
        text=text,
        label=predictor.labels[k],
        probability=float(probabilities[0, k]),
        predicted=predictor.labels[int(probabilities[0].argmax())],
        method="occlusion",
        unit=unit,
        tokens=[TokenScore(t.text, t.start, t.end, float(s)) for t, s in zip(tokens, scores, strict=True)],
        unseen_tokens=unseen,
    )


class IntegratedGradients:
    """The model's Keras network (lstm_cli.artifact.load_network), split after its Embedding so embeddings can be
    fed in."""

    def __init__(self, predictor: Predictor, *, steps: int = IG_STEPS):
        from lstm_cli.model import keras, tf  # also registers lstm-cli's own layers for loading

        self.tf, self.predictor, self.steps = tf, predictor, steps
        network = load_network(Path(predictor.path), predictor.metadata)
        embedding = next(layer for layer in network.layers if isinstance(layer, keras.layers.Embedding))
        self.table = np.asarray(embedding.embeddings)
        self.tail = keras.Model([network.inputs[0], embedding.output], network.outputs[0])

    def explain(self, text: str, *, label: str | None = None) -> Explanation:
        tf, labels = self.tf, self.predictor.labels
        tokens, unseen = _seen(self.predictor, text)
        ids = np.array([[t.id for t in tokens] or [OOV_ID]], dtype=np.int32)
        x = self.table[ids]  # [1, time, embedding]
        probabilities = self.tail([tf.constant(ids), tf.constant(x)], training=False).numpy()[0]
        k = _label_index(labels, label, probabilities)
        alphas = ((np.arange(self.steps) + 0.5) / self.steps).astype(np.float32)
        path = tf.constant(alphas[:, None, None] * x)  # every step of the path in one batch
        with tf.GradientTape() as tape:
            tape.watch(path)
            p = self.tail([tf.constant(np.repeat(ids, self.steps, axis=0)), path], training=False)[:, k]
        gradients = tape.gradient(p, path).numpy()
        scores = (gradients.mean(axis=0) * x[0]).sum(axis=-1)  # [time]
        baseline = self.tail([tf.constant(ids), tf.zeros_like(x)], training=False).numpy()[0, k]
        return Explanation(
            text=text,
            label=labels[k],
            probability=float(probabilities[k]),
            predicted=labels[int(probabilities.argmax())],
            method="integrated-gradients",
            unit="probability",
            tokens=[TokenScore(t.text, t.start, t.end, float(s)) for t, s in zip(tokens, scores, strict=False)],
            unseen_tokens=unseen,
            completeness_gap=float(abs(scores.sum() - (probabilities[k] - baseline))),
        )
