-- The gateway's tables in PostgreSQL (store.engine = "postgres"). Records are the
-- store codec's bytes (the same as the embedded engines keep); the other columns are
-- what the gateway queries by.

-- Incidents: integration + reference; the record is the whole Incident.
CREATE TABLE spg_incidents (
    integration text COLLATE "C" NOT NULL,
    reference   text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    loomis_id   text,
    -- Incident.created_at in nanoseconds since the epoch (exact, unlike timestamptz):
    -- the console lists newest first and pages by (created_ns, integration, reference).
    created_ns  bigint NOT NULL,
    record      bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, reference)
);
-- The console's search: the listing order, a reference in any integration, Loomis's id.
CREATE INDEX spg_incidents_listing ON spg_incidents (created_ns DESC, integration, reference);
CREATE INDEX spg_incidents_reference ON spg_incidents (reference);
CREATE INDEX spg_incidents_loomis_id ON spg_incidents (loomis_id) WHERE loomis_id IS NOT NULL;

-- What the caller sent for each incident (bounded and redacted, RawInput as JSON),
-- written with the new incident and removed with it.
CREATE TABLE spg_raw_inputs (
    integration text COLLATE "C" NOT NULL,
    reference   text COLLATE "C" NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (integration, reference)
);

-- The operators' audit log (AuditEntry as JSON), by id.
CREATE TABLE spg_audit (
    id     bigint PRIMARY KEY,
    record bytea NOT NULL
);

-- How Loomis names an incident (CustomerNumber + IncidentReference). The primary key is
-- what makes a reference unique across instances.
CREATE TABLE spg_references (
    customer    text NOT NULL,
    reference   text COLLATE "C" NOT NULL,
    integration text COLLATE "C" NOT NULL,
    incident    text NOT NULL,
    PRIMARY KEY (customer, reference)
);

-- Per integration: the last update sequence handed out (its row lock orders the
-- commits of one integration) and the last one removed by retention.
CREATE TABLE spg_counters (
    integration   text PRIMARY KEY,
    last_sequence bigint NOT NULL DEFAULT 0,
    pruned        bigint NOT NULL DEFAULT 0
);

-- The update log of each integration. `reference` is the incident's, for its timeline.
CREATE TABLE spg_updates (
    integration text COLLATE "C" NOT NULL,
    sequence    bigint NOT NULL,
    reference   text COLLATE "C" NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (integration, sequence)
);
CREATE INDEX spg_updates_incident ON spg_updates (integration, reference, sequence);

-- The outbox. `lane` is the delivery lane (a hash of the incident) whose lease says
-- which instance works the job; the record holds attempts and the retry schedule.
CREATE TABLE spg_jobs (
    id              bigint PRIMARY KEY,
    target          text NOT NULL,
    lane            integer NOT NULL,
    integration     text NOT NULL,
    reference       text NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    -- The job's place in its incident's order (Job::position): a job runs only when no
    -- job of the same incident and target stands before it.
    position        bigint NOT NULL,
    record          bytea NOT NULL
);
CREATE INDEX spg_jobs_lane ON spg_jobs (lane, id);
CREATE INDEX spg_jobs_incident ON spg_jobs (integration, reference, target);

CREATE TABLE spg_dead_letters (
    id     bigint PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE spg_orphans (
    id     bigint PRIMARY KEY,
    record bytea NOT NULL
);

-- Ids (jobs, dead letters, orphans) come in blocks: block b covers
-- b * 1024 + 1 ..= (b + 1) * 1024, so an instance takes one block per 1024 ids.
CREATE SEQUENCE spg_id_blocks;

-- Delivery lanes and who holds them: an instance works only the jobs of lanes it holds
-- and renews its lease; a lease that ran out is taken over.
CREATE TABLE spg_leases (
    lane       integer PRIMARY KEY,
    holder     text,
    expires_at timestamptz NOT NULL DEFAULT 'epoch'
);

-- Instances seen lately (each renews its row with its leases): the lanes are shared
-- out among those alive.
CREATE TABLE spg_instances (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

INSERT INTO spg_leases (lane) SELECT generate_series(0, 63);
