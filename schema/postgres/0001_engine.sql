-- presync engine schema, PostgreSQL. Times are milliseconds since the Unix epoch (UTC).
-- JSON columns hold serde_json of the engine's model types.

CREATE TABLE representatives (
    id            TEXT PRIMARY KEY NOT NULL,
    display_name  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- The directory: one external id per (representative, system); lookup both ways.
CREATE TABLE external_ids (
    system        TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    rep_id        TEXT NOT NULL REFERENCES representatives(id) ON DELETE CASCADE,
    PRIMARY KEY (system, external_id),
    UNIQUE (rep_id, system)
);

-- One row per representative; the row the resolver locks.
CREATE TABLE canonical (
    rep_id        TEXT PRIMARY KEY NOT NULL REFERENCES representatives(id) ON DELETE CASCADE,
    availability  TEXT,
    version       BIGINT NOT NULL DEFAULT 0,
    presence      TEXT
);

-- Per (representative, system): last observed there, last written there.
CREATE TABLE system_state (
    rep_id        TEXT NOT NULL REFERENCES representatives(id) ON DELETE CASCADE,
    system        TEXT NOT NULL,
    observed      TEXT,
    written       TEXT,
    PRIMARY KEY (rep_id, system)
);

-- Echoes presync expects back from its own writes.
CREATE TABLE expectations (
    id            BIGSERIAL PRIMARY KEY,
    rep_id        TEXT NOT NULL,
    system        TEXT NOT NULL,
    availability  TEXT NOT NULL,
    version       BIGINT NOT NULL,
    opened_at     BIGINT NOT NULL,
    completed_at  BIGINT,
    expires_at    BIGINT NOT NULL,
    superseded    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX expectations_rep ON expectations (rep_id);
CREATE INDEX expectations_expiry ON expectations (expires_at);

-- Durable inbox, deduplicated by delivery key. Processed rows stay (done_at set) for the
-- dedup retention, then are purged.
CREATE TABLE inbox (
    id            BIGSERIAL PRIMARY KEY,
    delivery_key  TEXT NOT NULL UNIQUE,
    system        TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    observation   TEXT NOT NULL,
    received_at   BIGINT NOT NULL,
    not_before    BIGINT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    claim_until   BIGINT,
    done_at       BIGINT
);
CREATE INDEX inbox_due ON inbox (not_before, id) WHERE done_at IS NULL;
CREATE INDEX inbox_done ON inbox (done_at) WHERE done_at IS NOT NULL;

-- Latest desired state per (representative, target). `seq` grows on every replacement so a
-- dispatcher can tell whether the row it wrote is still the latest.
CREATE TABLE outbox (
    rep_id              TEXT NOT NULL REFERENCES representatives(id) ON DELETE CASCADE,
    target              TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    desired             TEXT NOT NULL,
    availability        TEXT,
    version             BIGINT NOT NULL,
    seq                 BIGINT NOT NULL,
    reason              TEXT NOT NULL,
    origin_observed_at  BIGINT NOT NULL,
    enqueued_at         BIGINT NOT NULL,
    not_before          BIGINT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    claimed_by          TEXT,
    claim_until         BIGINT,
    PRIMARY KEY (rep_id, target)
);
CREATE INDEX outbox_due ON outbox (target, not_before);

-- Every decision and every write outcome, with its reason.
CREATE TABLE history (
    id                 BIGSERIAL PRIMARY KEY,
    rep_id             TEXT,
    system             TEXT NOT NULL,
    external_id        TEXT,
    delivery_key       TEXT,
    at                 BIGINT NOT NULL,
    rule               TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    availability       TEXT,
    canonical_version  BIGINT,
    writes             TEXT,
    detail             TEXT NOT NULL
);
CREATE INDEX history_rep ON history (rep_id, id);
CREATE INDEX history_key ON history (delivery_key text_pattern_ops);
CREATE INDEX history_at ON history (at);

-- Named leases for jobs that run on one instance at a time.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY NOT NULL,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);
