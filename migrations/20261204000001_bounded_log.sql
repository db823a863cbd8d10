-- Months of traffic in bounded space and flat periodic costs.
--
-- 1. The request log and its feedback are partitioned by day (UTC) of the request, so a
--    retention period drops whole days (`store::partitions`; `--log-retention-days`). Feedback
--    is partitioned by its request's time, not its own, so a request and its outcomes leave
--    together. A DEFAULT partition catches rows of a day that has no partition yet (a journal
--    replay of an old day, a clock far ahead); `agp_ensure_log_partition` moves them out when
--    the day's partition is made.
-- 2. Experiments keep sufficient statistics per arm and per user, folded in from an inbox that
--    the log's and the feedback's inserts fill (`store::experiment_stats`): a look reads the
--    aggregates, never the raw log.

-- (1) Partitioned log. Uniqueness must include the partition key: a request is (id,
-- created_at); the feedback foreign key goes (the handler checks the request exists).
ALTER TABLE feedback DROP CONSTRAINT feedback_request_id_fkey;
ALTER TABLE rerank_requests RENAME TO rerank_requests_unpartitioned;
ALTER TABLE feedback RENAME TO feedback_unpartitioned;
ALTER SEQUENCE feedback_id_seq OWNED BY NONE;

CREATE TABLE rerank_requests (LIKE rerank_requests_unpartitioned INCLUDING DEFAULTS)
    PARTITION BY RANGE (created_at);
CREATE TABLE rerank_requests_default PARTITION OF rerank_requests DEFAULT;

CREATE TABLE feedback (
    id          bigint NOT NULL DEFAULT nextval('feedback_id_seq'),
    project     text NOT NULL,
    request_id  text NOT NULL,
    -- the request's created_at: the partition key
    request_at  timestamptz NOT NULL,
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    kind        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (request_at);
CREATE TABLE feedback_default PARTITION OF feedback DEFAULT;
ALTER SEQUENCE feedback_id_seq OWNED BY feedback.id;

-- Makes the partitions of one UTC day of both tables (if missing), moving rows of that day
-- out of the DEFAULT partitions first. True when something was made.
CREATE FUNCTION agp_ensure_log_partition(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    made boolean := false;
    parent text;
    key text;
    part text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['rerank_requests', 'feedback'] LOOP
        key := CASE parent WHEN 'feedback' THEN 'request_at' ELSE 'created_at' END;
        part := parent || '_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(quote_ident(part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, parent);
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *)
                            INSERT INTO %I SELECT * FROM moved',
                           parent || '_default', key, key, part) USING lo, hi;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, lo, hi);
            made := true;
        END IF;
    END LOOP;
    RETURN made;
END $$;

-- Partitions for every day that has rows, and from yesterday to a week ahead.
SELECT agp_ensure_log_partition(d) FROM (
    SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS d FROM rerank_requests_unpartitioned
    UNION
    SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                           (now() AT TIME ZONE 'UTC')::date + 7, interval '1 day')::date
) days;

INSERT INTO rerank_requests SELECT * FROM rerank_requests_unpartitioned;
INSERT INTO feedback (id, project, request_id, request_at, user_id, item_id, kind, created_at)
SELECT f.id, f.project, f.request_id, r.created_at, f.user_id, f.item_id, f.kind, f.created_at
FROM feedback_unpartitioned f JOIN rerank_requests_unpartitioned r ON r.id = f.request_id;
DROP TABLE feedback_unpartitioned;
DROP TABLE rerank_requests_unpartitioned;

ALTER TABLE rerank_requests ADD PRIMARY KEY (id, created_at);
CREATE INDEX rerank_requests_user ON rerank_requests (project, user_id, created_at);
CREATE INDEX rerank_requests_created ON rerank_requests (project, created_at);
ALTER TABLE feedback ADD PRIMARY KEY (id, request_at);
-- one outcome per (request, item, kind); also the index feedback is read by
ALTER TABLE feedback ADD CONSTRAINT feedback_once UNIQUE (request_id, item_id, kind, request_at);

-- (2) Experiment statistics. The inbox holds what is not folded in yet: a logged request of
-- an arm (feedback_id 0) or a positive feedback event on one. Entries are made exactly once,
-- by the insert that makes the row (a replayed row inserts nothing), and deleted by the fold.
-- No foreign key: a key check would share-lock the experiment's row on every logged rerank
-- and wait behind every fold (which locks that row); entries of ended experiments are deleted
-- when they end.
CREATE TABLE experiment_inbox (
    experiment_id   uuid NOT NULL,
    request_id      text NOT NULL,
    request_at      timestamptz NOT NULL,
    feedback_id     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_id, request_id, feedback_id)
);

-- A queue: rows come and go all day. Vacuum it after every few thousand deletions (the leader
-- also vacuums it after large folds), or a fold's index scan walks every dead entry.
ALTER TABLE experiment_inbox SET (autovacuum_vacuum_scale_factor = 0,
                                  autovacuum_vacuum_threshold = 5000,
                                  autovacuum_vacuum_cost_delay = 0);

-- Sums per arm: every figure of a look is a ratio of these (see `experiment::fold`).
CREATE TABLE experiment_arms (
    experiment_id       uuid NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    arm                 text NOT NULL CHECK (arm IN ('control', 'treatment')),
    requests            bigint NOT NULL DEFAULT 0,
    positives           bigint NOT NULL DEFAULT 0,
    positive_at_k       bigint NOT NULL DEFAULT 0,
    reciprocal_rank_sum double precision NOT NULL DEFAULT 0,
    fallbacks           bigint NOT NULL DEFAULT 0,
    llm_calls           double precision NOT NULL DEFAULT 0,
    tokens              double precision NOT NULL DEFAULT 0,
    users               bigint NOT NULL DEFAULT 0,
    users_with_positive bigint NOT NULL DEFAULT 0,
    user_ctr_sum        double precision NOT NULL DEFAULT 0,
    user_ctr_sq_sum     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_id, arm)
);

-- Per user: requests and requests with a positive (each user's click-through). Removed when
-- the experiment ends (the result keeps the figures).
CREATE TABLE experiment_users (
    experiment_id       uuid NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    arm                 text NOT NULL,
    user_id             text NOT NULL,
    requests            integer NOT NULL,
    positive_requests   integer NOT NULL,
    PRIMARY KEY (experiment_id, arm, user_id)
);

-- Rewritten at every fold: small tables, vacuumed early.
ALTER TABLE experiment_arms SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
ALTER TABLE experiment_users SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_threshold = 1000);

-- Latencies are whole milliseconds: a count per value is an exact, bounded histogram.
CREATE TABLE experiment_latency (
    experiment_id   uuid NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    arm             text NOT NULL,
    latency_ms      integer NOT NULL,
    n               bigint NOT NULL,
    PRIMARY KEY (experiment_id, arm, latency_ms)
);

-- The first fold of an experiment puts what was logged since it started into the inbox
-- (requests drained while its start committed; experiments running before this migration).
ALTER TABLE experiments ADD COLUMN stats_backfilled boolean NOT NULL DEFAULT false;
ALTER TABLE experiments SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200);
INSERT INTO experiment_arms (experiment_id, arm)
SELECT id, a FROM experiments, unnest(ARRAY['control', 'treatment']) a;
