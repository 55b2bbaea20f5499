"""The suite carries no state of the machine it was written on: no fixture names an absolute path of it.

A fixture holding such a path passes only where that path still exists (it once made a fresh clone fail
`make test` with "unable to open database file": a pickled Optuna storage named the maker's optuna.db).
tests/machine_paths.py finds them, in text and binary files alike, and rewrites them to relative ones.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from machine_paths import PLACEHOLDER, machine_paths, relocate

FIXTURES = Path(__file__).parent / "fixtures"


def test_no_fixture_names_an_absolute_path_of_a_machine() -> None:
    files = [p for p in FIXTURES.rglob("*") if p.is_file()]
    assert len(files) > 20
    found = {str(p.relative_to(FIXTURES)): machine_paths(p.read_bytes()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_tool_takes_paths_out_of_pickles_and_text(tmp_path: Path) -> None:
    """A pickle rewritten with longer and shorter strings loads to the same object, paths replaced."""
    made = "/tmp/some-machine/work"
    obj = {"url": f"sqlite:///{made}/results/r/optuna.db", "paths": [f"{made}/x"] * 3, "n": list(range(300)),
           "blob": b"\0" * 70_000}  # large enough for pickle's framing (protocol 5 frames of 64 KiB)
    (tmp_path / "state.json").write_bytes(pickle.dumps(obj, protocol=5))  # Ray's pickles are not all .pkl
    (tmp_path / "run.json").write_text(f'{{"root": "{made}/data"}}')
    assert machine_paths((tmp_path / "state.json").read_bytes()) == ["/tmp/some-machine"]
    assert len(relocate(tmp_path, [made])) == 2
    for f in tmp_path.iterdir():
        assert machine_paths(f.read_bytes()) == []
    back = pickle.loads((tmp_path / "state.json").read_bytes())
    new = f"{PLACEHOLDER}/tmp-some-machine-work"
    assert back == {**obj, "url": f"sqlite:///{new}/results/r/optuna.db", "paths": [f"{new}/x"] * 3}
    assert (tmp_path / "run.json").read_text() == f'{{"root": "{new}/data"}}'
