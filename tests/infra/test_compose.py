"""Deployment defaults, checked offline (no Docker engine or Kubernetes cluster here): no secret has a
default, compose refuses to start without them, monitoring and database listen on this host only,
each service connects with its own least-privilege role, and the Kubernetes manifests keep no Secret.

Compose's variable interpolation is applied by `interpolate` below, following the Compose
specification's rules for the forms the file uses (`${VAR}`, `${VAR:-default}`, `${VAR:?message}`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from catalog.database import ROLE_URL_SETTINGS, resolve_urls
from catalog.settings import CatalogSettings
from tests.conftest import ROOT

INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
PUBLIC_SERVICES = {"api"}  # published on every interface on purpose: the STAC API and its tiles
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
ROLES = {"admin": "landsurf_admin", "ingest": "landsurf_ingest", "api": "landsurf_api"}


class MissingVariable(Exception):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation of every string of the document (`$$` is a literal `$`)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        is_set = bool(env.get(name)) if op and op.startswith(":") else name in env
        if op in (":-", "-"):
            return env[name] if is_set else arg
        if op in (":?", "?"):
            if not is_set:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def expressions(value) -> list[re.Match]:
    if isinstance(value, dict):
        return [m for v in value.values() for m in expressions(v)]
    if isinstance(value, list):
        return [m for v in value for m in expressions(v)]
    return list(VARIABLE.finditer(value)) if isinstance(value, str) else []


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory) -> dict[str, str]:
    """The variables infra/make-env.sh writes, as an operator gets them."""
    work = tmp_path_factory.mktemp("infra")
    script = work / "make-env.sh"
    script.write_text((INFRA / "make-env.sh").read_text())
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    env_file = work / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "exists" in again.stderr  # never overwritten
    pairs = [line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")]
    return dict(pairs)


def test_no_secret_has_a_default(compose):
    secrets = [m for m in expressions(compose) if SECRET.search(m["name"])]
    assert {m["name"] for m in secrets} >= {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
                                             "LANDSURF_ADMIN_DB_PASSWORD", "LANDSURF_INGEST_DB_PASSWORD",
                                             "LANDSURF_API_DB_PASSWORD"}
    for m in secrets:
        assert m["op"] == ":?", f"{m.group(0)} must be required (${{{m['name']}:?how to set it}})"
        assert "make-env.sh" in m["arg"] or ".env" in m["arg"], f"{m.group(0)} must say how to set it"
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if SECRET.search(key):
                assert VARIABLE.fullmatch(str(value)), f"{name}: {key} has a literal value"


def test_start_refuses_without_the_secrets_and_starts_with_them(compose, generated_env):
    with pytest.raises(MissingVariable) as refused:
        interpolate(compose, {})
    assert "make-env.sh" in str(refused.value)
    for name in generated_env:
        with pytest.raises(MissingVariable, match=name):
            interpolate(compose, {k: v for k, v in generated_env.items() if k != name})
    interpolate(compose, generated_env)  # every required variable is one make-env.sh writes


def _bindings(service: dict) -> list[tuple[str | None, str]]:
    """(host address or None for every interface, published port) of each `ports:` entry."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((entry.get("host_ip"), str(entry.get("published"))))
            continue
        parts = str(entry).split(":")
        out.append((parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) > 1 else parts[0]))
    return out


def test_only_the_api_listens_beyond_this_host(compose):
    services = compose["services"]
    assert "ports" not in services["db"], "the database is reached by the project's services only"
    for monitoring in ("prometheus", "grafana"):
        assert _bindings(services[monitoring]), f"{monitoring} should be reachable from this host"
    for name, service in services.items():
        if name in PUBLIC_SERVICES:
            continue
        for host, port in _bindings(service):
            assert host == "127.0.0.1", f"{name} publishes {port} on every interface"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"


def _roles_of(service: dict, env: dict[str, str], monkeypatch, tmp_path) -> dict[str, str]:
    """The login role each purpose of that service connects as, read by the code that connects."""
    environment = interpolate(service["environment"], env)
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("LANDSURF_")]:
            m.delenv(key)
        m.chdir(tmp_path)
        for key, value in environment.items():
            m.setenv(key, str(value))
        urls = resolve_urls(CatalogSettings())
    return {purpose: urlsplit(getattr(urls, purpose)).username for purpose in ROLES}


def test_each_service_connects_with_its_own_role(compose, generated_env, monkeypatch, tmp_path):
    services = compose["services"]
    assert _roles_of(services["migrate"], generated_env, monkeypatch, tmp_path) == ROLES
    api = _roles_of(services["api"], generated_env, monkeypatch, tmp_path)
    assert api["api"] == "landsurf_api" and api["ingest"] == "landsurf_ingest"
    assert "landsurf_admin" not in api.values()
    assert set(_roles_of(services["worker"], generated_env, monkeypatch, tmp_path).values()) == {"landsurf_ingest"}
    superuser_password = generated_env["POSTGRES_PASSWORD"]
    for name, service in services.items():
        values = [str(v) for v in interpolate(service.get("environment", {}), generated_env).values()]
        if name != "db":
            assert not any(superuser_password in v for v in values), f"{name} has the superuser's password"
            assert not any(urlsplit(v).username == "postgres" for v in values if v.startswith("postgres"))


def test_prometheus_is_the_scrape_address(compose, generated_env):
    resolved = interpolate(compose, generated_env)
    address = resolved["services"]["prometheus"]["networks"]["default"]["ipv4_address"]
    assert resolved["services"]["api"]["environment"]["LANDSURF_METRICS_SCRAPE_ADDRESSES"] == address
    subnet = resolved["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


def test_the_database_creates_the_roles_from_the_compose_passwords(compose):
    db = compose["services"]["db"]
    mounts = {v.split(":")[1]: INFRA / v.split(":")[0] for v in db["volumes"] if v.startswith("./")}
    script = mounts["/docker-entrypoint-initdb.d/20-landsurf-roles.sh"]
    assert script.exists() and script.stat().st_mode & 0o111
    text = script.read_text()
    for var in ("LANDSURF_ADMIN_DB_PASSWORD", "LANDSURF_INGEST_DB_PASSWORD", "LANDSURF_API_DB_PASSWORD"):
        assert var in db["environment"] and f'"${var}"' in text
    sql_in_container = re.search(r"-f (\S+)", text)[1]
    assert mounts[sql_in_container] == INFRA / "db-init" / "landsurf-roles.sql"


def _k8s_documents() -> list[dict]:
    kustomization = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((INFRA / "k8s" / name).read_text()) if d]
    return docs


def test_kubernetes_keeps_no_secret_and_gives_each_pod_its_role():
    docs = _k8s_documents()
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret in git is a default password"
    literal = re.compile(r"postgres(ql)?://[^:/@\s]+:[^@\s]+@")
    for d in docs:
        assert not literal.search(yaml.safe_dump(d)), f"{d['kind']} {d['metadata']['name']} holds a password"
    env_from = {d["metadata"]["name"]: [r["secretRef"]["name"] for c in d["spec"]["template"]["spec"]["containers"]
                                        for r in c.get("envFrom", []) if "secretRef" in r]
                for d in docs if d["kind"] in ("Deployment", "Job")}
    assert env_from == {"landsurf-api": ["landsurf-db-api"], "landsurf-migrate": ["landsurf-db-migrate"]}
    kustomization = (INFRA / "k8s" / "kustomization.yaml").read_text()
    for secret, keys in {"landsurf-db-api": ("LANDSURF_DATABASE_URL", "LANDSURF_DATABASE_INGEST_URL"),
                         "landsurf-db-migrate": ("LANDSURF_DATABASE_URL", "LANDSURF_DATABASE_INGEST_URL",
                                                 "LANDSURF_DATABASE_API_URL")}.items():
        block = kustomization.split(f"secret generic {secret}", 1)[1].split("secret generic", 1)[0]
        assert all(f"--from-literal={k}=" in block for k in keys), f"how to create {secret} is documented"
