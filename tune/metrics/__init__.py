"""Metrics: the declarations (classification.py), the one cell (cells.py) and the one bootstrap engine."""
