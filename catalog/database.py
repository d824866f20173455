"""Connections, roles and schema of the catalog database, embedded or external.

Three login roles: `admin` runs migrations, `ingest` writes items, `api` only reads. With
LANDSURF_DATABASE_URL set, that URL serves every role not given its own URL
(LANDSURF_DATABASE_INGEST_URL, LANDSURF_DATABASE_API_URL; docs/operations.md lists what that
database needs). Every connection carries a connect timeout and a statement timeout.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from pypgstac.version import __version__ as PYPGSTAC_VERSION

from catalog.embedded import DATABASE, EmbeddedCluster
from catalog.errors import ConfigurationError, DatabaseUnavailable, SchemaMismatch
from catalog.settings import CatalogSettings

EXTENSIONS = ("postgis", "btree_gist", "unaccent")
PGSTAC_ROLES = ("pgstac_admin", "pgstac_read", "pgstac_ingest")


@dataclass(frozen=True)
class DatabaseUrls:
    admin: str
    ingest: str
    api: str


# An external database may give the ingest and api roles URLs of their own (a deployment gives each
# service only the roles it needs); unset, they fall back to LANDSURF_DATABASE_URL.
ROLE_URL_SETTINGS = {"ingest": "database_ingest_url", "api": "database_api_url"}


def _checked_url(url: str, variable: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigurationError(
            f"{variable}={_redact(url)!r} is not a PostgreSQL URL",
            "use postgresql://user:password@host:port/dbname",
        )
    return url


def resolve_urls(settings: CatalogSettings) -> DatabaseUrls:
    """Where each role connects: the embedded cluster's roles, or the external URLs."""
    if settings.database_url:
        admin = _checked_url(settings.database_url, "LANDSURF_DATABASE_URL")
        urls = {"admin": admin}
        for role, name in ROLE_URL_SETTINGS.items():
            own = getattr(settings, name)
            urls[role] = _checked_url(own, f"LANDSURF_{name.upper()}") if own else admin
        return DatabaseUrls(**urls)
    cluster = EmbeddedCluster(settings)
    return DatabaseUrls(cluster.url("admin"), cluster.url("ingest"), cluster.url("api"))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def bounded_url(url: str, settings: CatalogSettings, statement_timeout_ms: int | None = None) -> str:
    """The URL with libpq bounds on connecting and on every statement, for libraries that take a DSN."""
    timeout = statement_timeout_ms if statement_timeout_ms is not None else settings.statement_timeout_ms
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("connect_timeout", str(max(1, int(settings.connect_timeout_s))))
    query["options"] = f"-c statement_timeout={timeout}"
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))  # libpq: %20, not +


def connect(url: str, settings: CatalogSettings, *, autocommit: bool = True) -> psycopg.Connection:
    """One bounded connection: fails in connect_timeout, statements cancelled after the timeout."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=max(1, int(settings.connect_timeout_s)),
            options=f"-c statement_timeout={settings.statement_timeout_ms} -c search_path=pgstac,public",
            application_name="landsurf",
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {_redact(url)}: {reason}",
            "check LANDSURF_DATABASE_URL (host, port, user, password) or run `landsurf db start`",
        ) from exc


@contextmanager
def session(settings: CatalogSettings, role: str = "admin") -> Iterator[psycopg.Connection]:
    url = getattr(resolve_urls(settings), role)
    conn = connect(url, settings)
    try:
        yield conn
    finally:
        conn.close()


def pgstac_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT to_regnamespace('pgstac') IS NOT NULL AND to_regproc('pgstac.get_version') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return None
    return conn.execute("SELECT pgstac.get_version()").fetchone()[0]


def check_schema(conn: psycopg.Connection) -> str:
    """Raise unless the database speaks the pgSTAC version of the installed pypgstac."""
    version = pgstac_version(conn)
    if version is None:
        raise SchemaMismatch("the database has no pgSTAC schema", "run `landsurf db migrate`")
    if version != PYPGSTAC_VERSION:
        raise SchemaMismatch(
            f"the database has pgSTAC {version} but this landsurf needs {PYPGSTAC_VERSION}",
            "run `landsurf db migrate` (or install the pypgstac that matches the database)",
        )
    return version


def check_postgis_available(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'").fetchone()
    if row is None:
        raise ConfigurationError(
            "PostGIS is not installed on the database server",
            "install it (Debian: `apt-get install postgresql-15-postgis-3`) and run `landsurf db migrate` again",
        )


def bootstrap_embedded(cluster: EmbeddedCluster, settings: CatalogSettings) -> None:
    """As the cluster superuser: database, extensions, pgSTAC group roles and landsurf login roles."""
    state = cluster.state()
    su = cluster.superuser_url()
    postgres_db = su.rsplit("/", 1)[0] + "/postgres"
    with connect(postgres_db, settings) as conn:
        check_postgis_available(conn)
        for role in PGSTAC_ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        memberships = {"admin": PGSTAC_ROLES, "ingest": ("pgstac_ingest", "pgstac_read"), "api": ("pgstac_read",)}
        for key, (user, password) in state["roles"].items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(user),
                    # pgSTAC's migration runs CREATE ROLE (even for existing roles): admin needs CREATEROLE
                    sql.SQL("CREATEROLE" if key == "admin" else "NOCREATEROLE"), sql.Literal(password),
                )
            )
            for group in memberships[key]:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(user)))
            conn.execute(
                sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                    sql.Identifier(user), sql.Literal(f"{settings.statement_timeout_ms}ms")
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(state["roles"]["admin"][0])
                )
            )
    with connect(su, settings) as conn:
        for ext in EXTENSIONS:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)))


def own_schema_sql() -> str:
    """landsurf's own SQL modules, in order (each idempotent)."""
    sql_dir = resources.files("catalog").joinpath("sql")
    names = sorted(p.name for p in sql_dir.iterdir() if p.name.endswith(".sql"))
    return "\n".join(sql_dir.joinpath(n).read_text() for n in names)


def migrate(settings: CatalogSettings) -> str:
    """Bring pgSTAC to the pinned version and landsurf's own schema up to date. Idempotent."""
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    if settings.embedded:
        cluster = EmbeddedCluster(settings)
        bootstrap_embedded(cluster, settings)
    urls = resolve_urls(settings)
    with connect(urls.admin, settings) as conn:
        check_postgis_available(conn)
        missing = [
            ext for ext in EXTENSIONS
            if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (ext,)).fetchone()
        ]
        for ext in missing:
            try:
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ConfigurationError(
                    f"extension {ext} is missing and this role may not create it",
                    f"as a superuser run `CREATE EXTENSION {ext};` in the database (see docs/operations.md)",
                ) from exc
    # a migration may rewrite large tables: bounded, but by a longer timeout than requests
    db = PgstacDB(dsn=bounded_url(urls.admin, settings, max(settings.statement_timeout_ms, 3_600_000)))
    try:
        version = Migrate(db).run_migration(PYPGSTAC_VERSION)
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"pgSTAC migration failed: {str(exc).strip().splitlines()[0]}",
            "the migrating role needs the pgstac_admin, pgstac_ingest and pgstac_read roles (docs/operations.md)",
        ) from exc
    finally:
        db.close()
    with connect(urls.admin, settings) as conn:
        conn.execute(own_schema_sql())
        for key in ("api", "ingest"):
            user = urlsplit(getattr(urls, key)).username
            if user and user != urlsplit(urls.admin).username:
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA landsurf TO {}").format(sql.Identifier(user)))
                conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA landsurf TO {}").format(
                    sql.Identifier(user)))
        ingest_user = urlsplit(urls.ingest).username
        if ingest_user and ingest_user != urlsplit(urls.admin).username:
            conn.execute(sql.SQL("GRANT INSERT, UPDATE ON landsurf.deliveries TO {}").format(
                sql.Identifier(ingest_user)))
            conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA landsurf TO {}").format(
                sql.Identifier(ingest_user)))
        check_schema(conn)
    return version
