-- Signed webhooks of subscriptions (catalog/webhooks.py, processing/webhooks.py): a subscription may carry one
-- receiver URL; the worker POSTs the items its search matches, published after its cursor, signed the Standard
-- Webhooks way with the subscription's secret.
CREATE TABLE IF NOT EXISTS landsurf.webhooks (
    subscription_id text PRIMARY KEY REFERENCES landsurf.subscriptions (id) ON DELETE CASCADE,
    url             text NOT NULL CHECK (length(url) <= 2048),
    -- every matching item whose `updated` is before the cursor has been delivered (or predates the subscription);
    -- the keys of the items delivered at or after it are in webhook_sent, so none is sent twice
    cursor          timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retrying', 'failing')),
    failures        integer NOT NULL DEFAULT 0,        -- consecutive failed attempts
    next_attempt    timestamptz NOT NULL DEFAULT now(),
    last_attempt    timestamptz,
    last_success    timestamptz,
    last_status     integer,                           -- the receiver's HTTP status (NULL: no answer)
    last_error      text CHECK (length(last_error) <= 500),
    delivered       bigint NOT NULL DEFAULT 0          -- items acknowledged by a 2xx
);
CREATE INDEX IF NOT EXISTS webhooks_due_idx ON landsurf.webhooks (next_attempt);

CREATE TABLE IF NOT EXISTS landsurf.webhook_sent (
    subscription_id text NOT NULL REFERENCES landsurf.webhooks (subscription_id) ON DELETE CASCADE,
    collection      text NOT NULL,
    item_id         text NOT NULL,
    updated         timestamptz NOT NULL,
    sent_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, collection, item_id, updated)
);

-- The signing secrets, in a schema of their own: the API's read-only role (which serves every public search)
-- cannot read them; only the writer role (the API's subscription writes, the delivering worker) can.
CREATE SCHEMA IF NOT EXISTS landsurf_secrets;
REVOKE ALL ON SCHEMA landsurf_secrets FROM PUBLIC;
CREATE TABLE IF NOT EXISTS landsurf_secrets.webhook_secrets (
    subscription_id text PRIMARY KEY REFERENCES landsurf.subscriptions (id) ON DELETE CASCADE,
    secret          text NOT NULL
);
REVOKE ALL ON landsurf_secrets.webhook_secrets FROM PUBLIC, pgstac_read;
GRANT USAGE ON SCHEMA landsurf_secrets TO pgstac_ingest;
GRANT SELECT, INSERT, DELETE ON landsurf_secrets.webhook_secrets TO pgstac_ingest;

GRANT SELECT ON landsurf.webhooks, landsurf.webhook_sent TO pgstac_read;
GRANT SELECT, INSERT, UPDATE, DELETE ON landsurf.webhooks, landsurf.webhook_sent TO pgstac_ingest;
