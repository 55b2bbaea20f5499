"""The search-space parser: every bad file gets one UserError naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tune.core import UserError
from tune.search.space import DefineByRun, load_space, parse_space

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, extra", [("default.yaml", {"efficientnet_lite2"}), ("demo.yaml", set())])
def test_shipped_spaces_parse(name: str, extra: set[str]) -> None:
    space = load_space(ROOT / "search_spaces" / name)
    assert set(space.architectures) == {"custom_cnn", "efficientnet_lite0", "mobilenet_v2", *extra}
    assert space.metric == "val_auc" and space.mode == "max"


GOOD = {"architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}}


@pytest.mark.parametrize("doc, key, problem", [
    ({**GOOD, "bogus": 1}, "bogus", "unknown key"),
    ({**GOOD, "metric": "val_xyz"}, "metric", "expected one of"),
    ({**GOOD, "mode": "up"}, "mode", "expected min or max"),
    ({"architectures": {"resnet": {}}}, "architectures.resnet", "unknown architecture"),
    ({"architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}}},
     "architectures.custom_cnn.lr", "low (0.01) > high (0.0001)"),
    ({"architectures": {"custom_cnn": {"lr": {"type": "loguniform", "low": "a", "high": 1}}}},
     "architectures.custom_cnn.lr.low", "expected a number"),
    ({"architectures": {"custom_cnn": {"conv_blocks": {"type": "int", "low": 1.5, "high": 3}}}},
     "architectures.custom_cnn.conv_blocks.low", "expected an integer"),
    ({"architectures": {"custom_cnn": {"unfrozen_blocks": {"type": "int", "low": 0, "high": 3}}}},
     "architectures.custom_cnn.unfrozen_blocks", "unknown key"),
    ({"architectures": {"mobilenet_v2": {"lr": {"type": "normal", "low": 0, "high": 1}}}},
     "architectures.mobilenet_v2.lr.type", "expected one of"),
    ({"architectures": {"custom_cnn": {"head_sizes": {"type": "categorical", "choices": []}}}},
     "architectures.custom_cnn.head_sizes.choices", "non-empty list"),
    ({**GOOD, "budget": {"trials": 0}}, "budget.trials", "expected >= 1"),
    ({**GOOD, "budget": {"max_epochs": 2, "grace_period": 5}}, "budget.grace_period", "> max_epochs"),
    ({**GOOD, "fixed": {"epochs": 3}}, "fixed.epochs", "unknown key"),
    ({"architectures": {}}, "architectures", "at least one"),
    ([1, 2], "(top level)", "expected a mapping"),
])
def test_bad_space_names_key(doc: object, key: str, problem: str) -> None:
    with pytest.raises(UserError) as e:
        parse_space(doc, "my.yaml")
    msg = str(e.value)
    assert msg.startswith("my.yaml: key '") and f"'{key}'" in msg and problem in msg
    assert "\n" not in msg


def test_bad_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("architectures: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_space(p)
    with pytest.raises(UserError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    # safe_load: a Python object tag is a YAML error, never executed
    p.write_text("architectures: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_space(p)


def test_define_by_run_is_conditional_on_arch() -> None:
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    for arch, forbidden in (("custom_cnn", "unfrozen_blocks"), ("mobilenet_v2", "conv_blocks")):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
        fn = DefineByRun(space, arch)
        for _ in range(5):
            t = study.ask()
            cfg = fn(t)
            assert cfg["arch"] == arch and forbidden not in t.params and forbidden not in cfg
            study.tell(t, 0.5)
        lr = space.architectures[arch]["lr"]
        assert all(lr.low <= t.params["lr"] <= lr.high for t in study.trials)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                      max_leaves=10)
keys = st.sampled_from(["metric", "mode", "seed", "image_size", "budget", "resources", "fixed", "architectures",
                        "custom_cnn", "mobilenet_v2", "lr", "type", "low", "high", "choices", "trials", "x"])
docs = st.recursive(values, lambda c: st.dictionaries(keys, c, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(docs)
def test_any_document_parses_or_gives_clear_error(doc: object) -> None:
    try:
        parse_space(doc, "f.yaml")
    except UserError as e:
        assert str(e).startswith("f.yaml: ")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_file_parses_or_gives_clear_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    p = tmp_path_factory.mktemp("h") / "s.yaml"
    p.write_text(text)
    try:
        load_space(p)
    except UserError:
        pass
    yaml.safe_dump({"ok": 1})
