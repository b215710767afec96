-- flowwatch history, schema version 4: the console's users, sessions and the triage of public reports.
-- They live in the history database and are created by its migrations (one mechanism, one Helm Job, one
-- `make migrate`); only the console reads and writes them (docs/console.md).

CREATE TABLE console_users (
    name text PRIMARY KEY,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash text NOT NULL,          -- argon2id, PHC string
    disabled boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    last_login_at bigint
);

-- The session id is never stored: only its SHA-256, so a read of this table cannot hijack a session.
CREATE TABLE console_sessions (
    id_hash bytea PRIMARY KEY,
    username text NOT NULL REFERENCES console_users (name) ON DELETE CASCADE,
    csrf text NOT NULL,
    created_at bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (username);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

CREATE TABLE console_report_triage (
    report_id text PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('confirmed', 'rejected')),
    author text NOT NULL,
    note text NOT NULL DEFAULT '',
    ts bigint NOT NULL
);
