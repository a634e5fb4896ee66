"""The seeds' plain Keras recipe, for comparison: every text padded to 200, batch 32, numpy arrays.

Embedding(20000, 128) -> LSTM(128, dropout 0.2, recurrent_dropout 0.2) -> Dense(64, relu) -> Dropout(0.5)
-> Dense(classes, softmax), no masking. Trains a fixed number of steps and prints JSON with useful
(non-padding) tokens/s. Usage: python benchmarks/keras_recipe.py TRAIN.csv [--steps 150]"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers

    with open(args.train, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    labels = sorted({r["label"] for r in rows})
    y = np.array([labels.index(r["label"]) for r in rows])
    vectorizer = layers.TextVectorization(max_tokens=20_000, output_sequence_length=200)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(4096))
    x = np.concatenate([vectorizer(tf.constant(texts[i : i + 4096])).numpy() for i in range(0, len(texts), 4096)])
    keras.utils.set_random_seed(1)
    order = np.random.default_rng(1).permutation(len(x))[: args.steps * 32]
    x, y = x[order], y[order]
    model = keras.Sequential(
        [
            keras.Input((200,), dtype="int64"),
            layers.Embedding(20_000, 128),
            layers.LSTM(128, dropout=0.2, recurrent_dropout=0.2),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(len(labels), activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # trace outside the timing
    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    useful = int((x != 0).sum())
    print(
        json.dumps(
            {"rows": len(x), "seconds": seconds, "tokens_per_s": useful / seconds, "rows_per_s": len(x) / seconds}
        )
    )


if __name__ == "__main__":
    main()
