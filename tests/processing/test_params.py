"""Versioned parameter sets: the hash follows the values (never the layout), typed sets refuse typos."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from processing.params import PARAMS_DIR, ParamsError, load_params, params_hash
from processing.scd import ScdParams
from processing.snow import SnowParams

SETS = sorted(p.stem for p in PARAMS_DIR.glob("*.toml"))


def _toml(values: dict) -> str:
    """A TOML rendering of a flat set (the repository's sets are flat)."""
    def render(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)
    return "".join(f"{k} = {render(v)}\n" for k, v in values.items())


@pytest.mark.parametrize("name", ["snow", "scd"])
def test_repository_sets_load_with_a_stable_short_hash(name):
    values, version = load_params(name)
    again, version_again = load_params(name)
    assert values == again and version == version_again
    assert len(version) == 12 and int(version, 16) >= 0


def test_every_set_in_the_repository_is_valid_toml_and_hashes():
    assert {"snow", "scd"} <= set(SETS)
    for name in SETS:
        values, version = load_params(name)
        assert values and len(version) == 12


def test_comments_layout_and_key_order_do_not_change_the_version(tmp_path):
    values, version = load_params("snow")
    reordered = dict(reversed(list(values.items())))
    (tmp_path / "snow.toml").write_text("# the same values, another file\n\n" + _toml(reordered).replace(" = ", "="))
    assert load_params("snow", tmp_path)[1] == version


@hsettings(max_examples=60, deadline=None)
@given(data=st.data())
def test_changing_any_value_changes_the_version(data):
    values, version = load_params("snow")
    key = data.draw(st.sampled_from(sorted(values)))
    old = values[key]
    if isinstance(old, bool):
        new = not old
    elif isinstance(old, int):
        new = data.draw(st.integers(-10**6, 10**6).filter(lambda v: v != old))
    else:
        new = data.draw(st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: v != old))
    assert params_hash(values | {key: new}) != version


def test_a_type_change_is_a_new_version_too(tmp_path):
    values, version = load_params("snow")
    assert isinstance(values["dz"], int)
    assert params_hash(values | {"dz": float(values["dz"])}) != version


def test_typed_sets_carry_the_hash_of_their_file():
    assert SnowParams.load().version == load_params("snow")[1]
    assert ScdParams.load().version == load_params("scd")[1]
    assert SnowParams.load().as_dict() == load_params("snow")[0]


def test_a_typo_never_falls_back_to_a_default(tmp_path):
    values, _ = load_params("snow")
    typo = {("ndsi_pas1" if k == "ndsi_pass1" else k): v for k, v in values.items()}
    (tmp_path / "snow.toml").write_text(_toml(typo))
    with pytest.raises(ParamsError, match="missing ndsi_pass1; unknown ndsi_pas1"):
        SnowParams.load("snow", tmp_path)
    with pytest.raises(ParamsError, match="missing min_snow_days"):
        ScdParams.from_dict({"date_margin_days": 15, "snow_min_value": 1})


def test_bad_names_files_and_values_are_domain_errors(tmp_path):
    with pytest.raises(ParamsError, match="not a parameter-set name"):
        load_params("../snow")
    with pytest.raises(ParamsError, match="known sets: .*snow"):
        load_params("snwo")
    (tmp_path / "broken.toml").write_text("dz = = 3\n")
    with pytest.raises(ParamsError, match="not valid TOML"):
        load_params("broken", tmp_path)
    (tmp_path / "inf.toml").write_text("dz = inf\n")
    with pytest.raises(ParamsError, match="non-finite"):
        load_params("inf", tmp_path)
    values, _ = load_params("snow")
    with pytest.raises(ParamsError, match="must be positive"):
        SnowParams.from_dict(values | {"rf": 0})
    with pytest.raises(ParamsError, match="snow_min_value"):
        ScdParams.from_dict({"date_margin_days": 15, "snow_min_value": 101, "min_snow_days": 10})


def test_the_repository_files_parse_as_plain_toml():
    for name in SETS:
        with (PARAMS_DIR / f"{name}.toml").open("rb") as fh:
            assert tomllib.load(fh) == load_params(name)[0]
    assert Path(PARAMS_DIR / "__init__.py").is_file()
