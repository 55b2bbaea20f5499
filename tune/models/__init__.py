"""Models: the detector and its parts (detector.py), the registry (registry.py), weights, Grad-CAM maps."""
