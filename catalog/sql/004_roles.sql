-- Token roles are `admin` (writes, operator views), `operator` (operator views) and `user` (asks for derived
-- products through the processes API). Tokens of the roles that existed before (ingest, read) granted nothing
-- beyond anonymous access: they are revoked.
ALTER TABLE landsurf.api_tokens DROP CONSTRAINT IF EXISTS api_tokens_role_check;
UPDATE landsurf.api_tokens SET revoked = coalesce(revoked, now()), role = 'operator'
 WHERE role NOT IN ('admin', 'operator', 'user');
ALTER TABLE landsurf.api_tokens ADD CONSTRAINT api_tokens_role_check CHECK (role IN ('admin', 'operator', 'user'));
