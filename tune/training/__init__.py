"""Training: the config, the loop (loop.py: fit), the feature cache, and what a training writes."""
