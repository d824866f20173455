"""stac-api-validator with every schema read from tests/schemas/ and no connection but to loopback.

Run as `python -m tests.schemas.offline_validator <stac-api-validator options>`. The validator fetches the
STAC and extension schemas from the internet through stac-validator (its own checks and stac-check's), so
offline each check fails with a connection error. Here both `StacValidate` classes take the vendored
`schema_map`, and name resolution refuses any host but the local one, so a schema that is not vendored is an
error naming it, never a silent download.
"""

from __future__ import annotations

import socket
import sys

import stac_api_validator.validations
import stac_check.lint
from stac_api_validator.__main__ import main
from stac_validator.validate import StacValidate

from tests.schemas import schema_map

LOCAL = {"127.0.0.1", "localhost", "::1"}


class OfflineStacValidate(StacValidate):
    def __init__(self, *args, **kwargs) -> None:
        kwargs["schema_map"] = {**schema_map(), **(kwargs.get("schema_map") or {})}
        super().__init__(*args, **kwargs)


_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    if host not in LOCAL:
        raise OSError(f"offline validation: no connection to {host} (vendor what it serves in tests/schemas/)")
    return _getaddrinfo(host, *args, **kwargs)


def run(argv: list[str]) -> None:
    socket.getaddrinfo = _loopback_only  # type: ignore[assignment]
    stac_api_validator.validations.StacValidate = OfflineStacValidate  # type: ignore[misc]
    stac_check.lint.StacValidate = OfflineStacValidate  # type: ignore[misc]
    main(args=argv, prog_name="stac-api-validator")


if __name__ == "__main__":
    run(sys.argv[1:])
