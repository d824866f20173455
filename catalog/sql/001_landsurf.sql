-- landsurf's own tables, beside pgSTAC's. Idempotent: run on every `landsurf db migrate`.
CREATE SCHEMA IF NOT EXISTS landsurf;

-- API bearer tokens: only a hash is stored; the role decides what the token may do.
CREATE TABLE IF NOT EXISTS landsurf.api_tokens (
    token_sha256 text PRIMARY KEY,
    name         text NOT NULL,
    role         text NOT NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    revoked      timestamptz
);
