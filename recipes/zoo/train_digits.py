"""Train the example digits CNNs and write their weights beside this file.

Run from the repository root: ``python -m recipes.zoo.train_digits``. Writes
``digits_cnn.pt`` (a torch state dict) and ``digits_cnn.keras``. Both train only on the
samples that ``stages/common/datasets/splits.py`` leaves out of its calibration and evaluation
splits (with the default seed and sizes), so the evaluation accuracy edgekiln reports is honest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recipes.zoo.digits import digits_cnn, digits_keras

HERE = Path(__file__).parent
# the defaults of DatasetConfig: seed 0, 256 calibration and 512 evaluation samples
SEED, CALIBRATION, EVALUATION = 0, 256, 512
EPOCHS, BATCH = 30, 32


def load_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, eval images, eval labels); images NCHW in 0..1."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(images))
    evaluation = order[CALIBRATION:CALIBRATION + EVALUATION]
    train = order[CALIBRATION + EVALUATION:]
    return images[train], labels[train], images[evaluation], labels[evaluation]


def train_torch(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> float:
    """Train ``digits_cnn``, save its state dict and return the evaluation accuracy."""
    import torch

    torch.manual_seed(SEED)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(xt), generator=generator).split(BATCH):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_eval)).argmax(dim=1).numpy()
    torch.save(model.state_dict(), HERE / "digits_cnn.pt")
    return float((predicted == y_eval).mean())


def train_keras(x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> float:
    """Train ``digits_keras`` on NHWC images, save it and return the evaluation accuracy."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = digits_keras()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    nhwc, nhwc_eval = x.transpose(0, 2, 3, 1), x_eval.transpose(0, 2, 3, 1)
    model.fit(nhwc, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    predicted = model.predict(nhwc_eval, verbose=0).argmax(axis=1)
    # an uncompiled copy keeps the optimizer state (twice the weights) out of the file
    inference = digits_keras()
    inference.set_weights(model.get_weights())
    inference.save(HERE / "digits_cnn.keras")
    return float((predicted == y_eval).mean())


def main() -> None:
    splits = load_splits()
    print(f"training on {len(splits[0])} samples, evaluating on {len(splits[2])}")
    print(f"torch eval accuracy: {train_torch(*splits):.4f}")
    print(f"keras eval accuracy: {train_keras(*splits):.4f}")


if __name__ == "__main__":
    main()
