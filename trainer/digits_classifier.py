"""A digit classifier that judges the demo's samples: sample quality without a download.

Logistic regression on the demo's own training digits (same scaling to [-1, 1], same resize, same
held-out split), fitted once per process and per resolution. Its accuracy on the class-conditional
samples says whether a sample of "three" looks like a three to a model that never saw the generator;
its accuracy on the real held-out digits is the ceiling a generator can reach on this measure.
"""

from functools import lru_cache

import numpy as np
import torch

from trainer.data import load_digits_dataset

CHANCE = 0.1  # ten classes


def _features(images: torch.Tensor) -> np.ndarray:
    return images.detach().float().cpu().reshape(len(images), -1).numpy()


@lru_cache(maxsize=4)
def classifier(resolution: int):
    """The fitted classifier for digits at ``resolution`` (lbfgs on fixed data: deterministic)."""
    from sklearn.linear_model import LogisticRegression

    data = load_digits_dataset(resolution)
    model = LogisticRegression(C=0.1, max_iter=2000)
    model.fit(_features(data.latents), data.cond["class_labels"].numpy())
    return model


def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` (N, 1, R, R) in [-1, 1] that the classifier reads as their ``labels``."""
    predicted = classifier(images.shape[-1]).predict(_features(images))
    return float((predicted == labels.detach().cpu().numpy()).mean())


def held_out_accuracy(resolution: int) -> float:
    """The classifier's accuracy on the real held-out digits: the best a generator can score."""
    data = load_digits_dataset(resolution)
    return accuracy(data.val_latents, data.val_cond["class_labels"])
