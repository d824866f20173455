-- Users who download, and their tokens (catalog/users.py). A token is kept as its SHA-256 only, lives until
-- `expires`, and may be refreshed once, in the second half of its life, by whoever holds it — so a bulk
-- download never breaks on an expiry, and revoking the user stops every token at once.
CREATE TABLE IF NOT EXISTS landsurf.users (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$'),
    created timestamptz NOT NULL DEFAULT now(),
    revoked timestamptz
);

CREATE TABLE IF NOT EXISTS landsurf.user_tokens (
    token_sha256   text PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES landsurf.users (id) ON DELETE CASCADE,
    created        timestamptz NOT NULL DEFAULT now(),
    expires        timestamptz NOT NULL,
    revoked        timestamptz,
    refreshed_from text UNIQUE,              -- the token this one replaced: each token is refreshed at most once
    CHECK (expires > created)
);
CREATE INDEX IF NOT EXISTS user_tokens_user_idx ON landsurf.user_tokens (user_id);
CREATE INDEX IF NOT EXISTS user_tokens_expires_idx ON landsurf.user_tokens (expires);

-- The one write the API makes for a user: a new token for the holder of a live one, with the same lifetime.
-- SECURITY DEFINER so that the API's roles need no INSERT on the table: whoever calls it must know a live
-- token in clear (the table holds only hashes), and gets nothing more than that token already gave.
CREATE OR REPLACE FUNCTION landsurf.refresh_user_token(old_token text, new_token text)
RETURNS TABLE (user_name text, valid_until timestamptz, refusal text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_hash text := encode(sha256(convert_to(old_token, 'UTF8')), 'hex');
    t record;
BEGIN
    SELECT k.user_id, k.created, k.expires, k.revoked, u.name, u.revoked AS user_revoked INTO t
      FROM landsurf.user_tokens k JOIN landsurf.users u ON u.id = k.user_id
     WHERE k.token_sha256 = old_hash;
    IF NOT FOUND OR t.revoked IS NOT NULL OR t.user_revoked IS NOT NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::timestamptz, 'unknown or revoked'::text; RETURN;
    END IF;
    IF t.expires <= now() THEN
        RETURN QUERY SELECT t.name, t.expires, 'expired'::text; RETURN;
    END IF;
    IF now() < t.created + (t.expires - t.created) / 2 THEN
        RETURN QUERY SELECT t.name, t.created + (t.expires - t.created) / 2, 'too early'::text; RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM landsurf.user_tokens WHERE refreshed_from = old_hash) THEN
        RETURN QUERY SELECT t.name, t.expires, 'already refreshed'::text; RETURN;
    END IF;
    BEGIN
        INSERT INTO landsurf.user_tokens (token_sha256, user_id, expires, refreshed_from)
        VALUES (encode(sha256(convert_to(new_token, 'UTF8')), 'hex'), t.user_id, now() + (t.expires - t.created),
                old_hash);
    EXCEPTION WHEN unique_violation THEN  -- a concurrent refresh of the same token won
        RETURN QUERY SELECT t.name, t.expires, 'already refreshed'::text; RETURN;
    END;
    -- tokens dead for a month are of no use to anyone: the table does not grow with refreshes
    DELETE FROM landsurf.user_tokens WHERE landsurf.user_tokens.expires < now() - interval '30 days';
    RETURN QUERY SELECT t.name, now() + (t.expires - t.created), NULL::text;
END $$;
