-- The closed loop. The request log keeps the history the profile was written from (item ids,
-- oldest first), so logged training cases see exactly what the service saw.
ALTER TABLE rerank_requests ADD COLUMN history jsonb;
CREATE INDEX rerank_requests_created ON rerank_requests (project, created_at);
CREATE INDEX feedback_request ON feedback (request_id);

-- Online experiments: a label's traffic split between a control and a treatment version of
-- `p_gen` or of the blend, decided from the request log and joined feedback.
CREATE TABLE experiments (
    id              uuid PRIMARY KEY,
    project         text NOT NULL REFERENCES projects(id),
    name            text NOT NULL CHECK (name IN ('p_gen', 'blend')),
    label           text NOT NULL,
    control         integer NOT NULL,
    treatment       integer NOT NULL,
    treatment_share double precision NOT NULL,
    settings        jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'promoted', 'kept_control', 'rolled_back', 'inconclusive', 'void', 'stopped')),
    -- always-valid p-value: the minimum over every look so far
    p_value         double precision NOT NULL DEFAULT 1,
    looks           integer NOT NULL DEFAULT 0,
    result          jsonb,
    reason          text,
    source          text NOT NULL DEFAULT 'api',
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz
);
CREATE UNIQUE INDEX experiments_one_running ON experiments (project, name, label) WHERE status = 'running';

-- Autopilot: per project, off by default.
CREATE TABLE autopilot (
    project             text PRIMARY KEY REFERENCES projects(id),
    enabled             boolean NOT NULL DEFAULT false,
    settings            jsonb NOT NULL DEFAULT '{}',
    -- feedback rows seen when the last run started (new positives are counted after it)
    last_feedback_id    bigint NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Every autopilot step with its reason.
CREATE TABLE autopilot_runs (
    id              uuid PRIMARY KEY,
    project         text NOT NULL REFERENCES projects(id),
    status          text NOT NULL CHECK (status IN ('optimizing', 'experimenting', 'done', 'skipped', 'failed')),
    job_id          uuid,
    experiment_id   uuid,
    reason          text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
