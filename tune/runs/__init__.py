"""Run folders: the layout and run.json (layout.py), trials, the leaderboard, model files (inference.py)."""
