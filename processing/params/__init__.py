"""Versioned parameter sets of the derived products: one TOML file per set in this folder, read by name.

Why files and a hash: a product's version comes from the software version and the parameter-set hash, so that a
changed parameter always yields a new product version, never a silent change (a test calibration file once reached
MUSCATE production). The hash is taken over the *values* (canonical JSON of the parsed TOML: sorted keys, no
whitespace), so comments and layout do not change it, any value or type change does.

Format, for every set (`snow.toml`, `scd.toml`, `l3a.toml` …):
* plain TOML; top-level keys or tables, whatever the product needs; units in the key's comment;
* `name = load_params("snow")` → `(dict, version_hash)`; `version_hash` is 12 hex digits of the SHA-256 of the
  canonical JSON (`params_hash(dict)`), recorded in items as `processing:*` / the product version;
* typed access is the product module's business (e.g. `processing.snow.SnowParams.from_dict`), which must refuse
  unknown and missing keys so that a typo never falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from catalog.errors import LandsurfError

PARAMS_DIR = Path(__file__).resolve().parent
HASH_DIGITS = 12
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ParamsError(LandsurfError):
    """A parameter set is missing, unreadable or does not fit the product that reads it."""

    exit_code = 2


def params_hash(values: dict[str, Any]) -> str:
    """The version hash of a parameter set: its values, canonically serialised, not its bytes."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_DIGITS]


def load_params(name: str, directory: Path | None = None) -> tuple[dict[str, Any], str]:
    """The parameter set `name` (`<directory>/<name>.toml`, default this package) and its version hash."""
    if not _NAME.match(name):
        raise ParamsError(f"{name!r} is not a parameter-set name", "use lower-case letters, digits, '-' or '_'")
    folder = directory or PARAMS_DIR
    path = folder / f"{name}.toml"
    try:
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in folder.glob("*.toml"))) or "none"
        raise ParamsError(f"no parameter set {name!r} in {folder}", f"known sets: {known}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParamsError(f"parameter set {path} is not valid TOML: {exc}", "fix the file") from exc
    try:
        return values, params_hash(values)
    except ValueError as exc:  # nan or inf: not a reproducible value
        raise ParamsError(f"parameter set {path} holds a non-finite number", "write a finite value") from exc


def check_keys(name: str, values: dict[str, Any], required: set[str]) -> None:
    """Refuse a set whose keys are not exactly `required`: a typo must not fall back to a default."""
    missing, unknown = sorted(required - values.keys()), sorted(values.keys() - required)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ParamsError(f"parameter set {name!r}: {'; '.join(parts)}",
                          "the keys must be exactly those the product reads (see its module docstring)")
