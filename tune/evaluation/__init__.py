"""Evaluation: finalize (the one reader of the test split), ensembles, evaluate, reproduce."""
