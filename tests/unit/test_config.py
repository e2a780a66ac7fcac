from pathlib import Path

import pytest

from tuneforge.config import Recipe, apply_override, load_recipe, validate_recipe
from tuneforge.errors import TuneforgeError

MINIMAL = {
    "name": "r",
    "task": "classification",
    "data": {"train": "t.csv", "validation_split": 0.2},
}


def test_defaults_follow_the_design():
    r = validate_recipe(dict(MINIMAL))
    assert r.base_model == "smollm2-135m"
    assert r.method == "lora"
    assert r.lora.target_modules == "all-linear"
    assert r.output_dir == Path("runs")
    assert r.trust_remote_code is False


def test_unknown_top_level_key_suggests_the_right_one():
    with pytest.raises(TuneforgeError) as e:
        validate_recipe({**MINIMAL, "trainig": {}})
    assert "unknown key 'trainig'" in str(e.value)
    assert "did you mean 'training'" in str(e.value)


def test_unknown_nested_key_suggests_within_its_section():
    with pytest.raises(TuneforgeError) as e:
        validate_recipe({**MINIMAL, "training": {"learnig_rate": 0.1}})
    assert "unknown key 'training.learnig_rate' (did you mean 'learning_rate'?)" in str(e.value)


@pytest.mark.parametrize(
    ("section", "value", "field"),
    [
        ("training", {"learning_rate": -1}, "training.learning_rate"),
        ("training", {"batch_size": 0}, "training.batch_size"),
        ("training", {"epochs": "three"}, "training.epochs"),
        ("lora", {"dropout": 1.5}, "lora.dropout"),
        ("method", "qlora-ish", "method"),
        ("task", "regression", "task"),
    ],
)
def test_bad_values_name_the_field(section, value, field):
    with pytest.raises(TuneforgeError) as e:
        validate_recipe({**MINIMAL, section: value})
    assert field in str(e.value)


def test_validation_file_and_split_are_exclusive():
    with pytest.raises(TuneforgeError, match="either `validation`"):
        validate_recipe(
            {**MINIMAL, "data": {"train": "a", "validation": "b", "validation_split": 0.1}}
        )


def test_errors_carry_yaml_line_numbers(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: r\ntask: classification\ndata:\n  train: t.csv\ntraining:\n  epochs: -2\n")
    with pytest.raises(TuneforgeError) as e:
        load_recipe(p)
    assert f"{p} line 6: training.epochs" in str(e.value)


def test_invalid_yaml_reports_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: r\ntask: [classification\n")
    with pytest.raises(TuneforgeError, match="invalid YAML"):
        load_recipe(p)


def test_overrides_are_typed_and_nested():
    raw = {"name": "r", "training": {"epochs": 3}}
    apply_override(raw, "training.epochs=1")
    apply_override(raw, "lora.target_modules=[q_proj, v_proj]")
    apply_override(raw, "baseline.enabled=false")
    assert raw["training"]["epochs"] == 1
    assert raw["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert raw["baseline"]["enabled"] is False


def test_override_without_equals_is_rejected():
    with pytest.raises(TuneforgeError, match="KEY=VALUE"):
        apply_override({}, "training.epochs")


def test_override_cannot_descend_into_a_value():
    with pytest.raises(TuneforgeError, match="'name' is not a section"):
        apply_override({"name": "x"}, "name.first=1")


def test_recipe_round_trips_through_yaml(tmp_path):
    import yaml

    r = validate_recipe(dict(MINIMAL))
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r.to_yaml_dict()))
    assert load_recipe(p) == r
    assert isinstance(r, Recipe)
