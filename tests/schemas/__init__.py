"""The JSON schemas of STAC 1.1.0 and of every extension landsurf declares, vendored so validation runs offline.

Files sit at the path of their public URL (`stac-extensions.github.io/eo/v1.1.0/schema.json` is
`https://stac-extensions.github.io/eo/v1.1.0/schema.json`); README.md says where each came from. A URL
that is not here is an error naming it, never a download.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import jsonschema_specifications
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

ROOT = Path(__file__).resolve().parent
CORE = {
    "Feature": "https://schemas.stacspec.org/v{v}/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v{v}/collection-spec/json-schema/collection.json",
    "Catalog": "https://schemas.stacspec.org/v{v}/catalog-spec/json-schema/catalog.json",
}


class SchemaNotVendored(LookupError):
    """A schema URL with no local copy: vendor it (see tests/schemas/README.md) rather than fetch it."""


def _urls() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.json")):
        yield "https://" + path.relative_to(ROOT).as_posix(), path


def local_path(url: str) -> Path:
    """The vendored copy of a schema URL (a trailing `#` is ignored)."""
    url = url.rstrip("#")
    path = ROOT / url.removeprefix("https://").removeprefix("http://")
    if not url.startswith(("https://", "http://")) or not path.is_file():
        raise SchemaNotVendored(f"schema {url} is not vendored under tests/schemas/: add it (README.md says how)")
    return path


def schema_map() -> dict[str, str]:
    """URL → local file for every vendored schema (the form stac-validator's `schema_map` takes)."""
    return {url: str(path) for url, path in _urls()}


def _retrieve(uri: str) -> Resource:
    try:
        return Resource.from_contents(json.loads(local_path(uri).read_text()))
    except SchemaNotVendored as exc:
        raise NoSuchResource(ref=uri) from exc


@functools.cache
def registry() -> Registry:
    """Every vendored schema under its URL, plus the JSON-Schema metaschemas; nothing is fetched."""
    resources = [(url, Resource.from_contents(json.loads(path.read_text()))) for url, path in _urls()]
    return (Registry(retrieve=_retrieve).with_resources(resources)  # type: ignore[call-arg]
            .combine(jsonschema_specifications.REGISTRY))


@functools.cache
def validator(url: str) -> Any:
    """A validator of the vendored schema at `url`, resolving every reference offline."""
    schema = json.loads(local_path(url).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry(), format_checker=cls.FORMAT_CHECKER)


def schemas_of(obj: dict) -> list[str]:
    """The core schema of `obj` (by type and stac_version) and the schema of each extension it declares."""
    core = CORE.get(obj.get("type", ""))
    if core is None:
        raise ValueError(f"{obj.get('id')!r}: type {obj.get('type')!r} is not a STAC Item, Collection or Catalog")
    return [core.format(v=obj.get("stac_version"))] + list(obj.get("stac_extensions") or [])


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    if not error.context:
        yield error
    for sub in error.context or ():
        yield from _leaves(sub)


def errors(obj: dict) -> list[str]:
    """Why `obj` fails each schema it must satisfy (empty when it is valid); one line per failing schema.

    Extension schemas are `oneOf` (Item | Collection): the deepest leaf error is the one that says what is wrong.
    """
    out = []
    for url in schemas_of(obj):
        leaves = [leaf for error in validator(url.rstrip("#")).iter_errors(obj) for leaf in _leaves(error)]
        if leaves:
            leaf = max(leaves, key=lambda e: len(e.absolute_path))
            where = "/".join(str(p) for p in leaf.absolute_path) or "(root)"
            out.append(f"{obj.get('id')}: {url}: {leaf.message[:300]} at {where}")
    return out
