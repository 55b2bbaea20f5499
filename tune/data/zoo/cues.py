"""Two no-learning cues, the bar a detector has to clear on a zoo family.

- Colour statistics: a logistic regression on each image's per-channel mean and standard deviation. The zoo colour
  corrects every fake to its source crop, so this should be near chance (at most 0.65 AUC): a family above that has
  a colour shortcut.
- Smoothness: the mean absolute Laplacian of the grey image, with smoother meaning fake; nothing is fitted. A
  generator that up-samples blurs, so this catches some families; it scores below 0.5 on a family whose fakes
  are sharper than photos (a denoiser's residual noise, random phases), the sign flip a trained detector can
  also make on an unseen generator.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def colour_features(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N, 6): per-channel mean and standard deviation, in [0, 1] units."""
    f = x.astype(np.float32) / 255
    return np.concatenate([f.mean((2, 3)), f.std((2, 3))], axis=1)


def colour_model() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def colour_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """P(fake) of test images from a colour-statistics model fitted on the training images."""
    model = colour_model().fit(colour_features(train_x), train_y)
    return model.predict_proba(colour_features(test_x))[:, 1]


def colour_auc_cv(x: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Colour-statistics AUC of one dataset, each image scored by a model fitted on the other folds (for a dataset
    too small to hold out a test split worth the name)."""
    split = StratifiedKFold(folds, shuffle=True, random_state=0)
    p = cross_val_predict(colour_model(), colour_features(x), y, cv=split, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def laplacian(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N,): mean absolute 4-neighbour Laplacian of the grey image (edges excluded)."""
    g = x.astype(np.float32).mean(1) / 255
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return np.abs(lap).mean((1, 2))


def smoothness_scores(x: np.ndarray) -> np.ndarray:
    """The smoothness cue's score: higher = smoother = more likely fake."""
    return -laplacian(x)
