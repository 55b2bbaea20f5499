"""Hyperparameter search for deepfake image detectors (Ray Tune + Optuna + ASHA)."""

__version__ = "0.1.0"

# Label convention, used everywhere: Fake is the positive class, so precision and
# recall are about catching fakes.
CLASSES: tuple[str, str] = ("Real", "Fake")
FAKE: int = 1
REAL: int = 0
