-- AGP Rerank schema: the whole design, so later features add behaviour, not a rewrite.
-- Every row belongs to a tenant (`project`); the default project is 'default'.

CREATE TABLE projects (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projects (id) VALUES ('default');

-- API keys: only a SHA-256 of the secret is stored; `prefix` lets people recognise a key.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    project     text NOT NULL REFERENCES projects(id),
    name        text NOT NULL DEFAULT '',
    scope       text NOT NULL CHECK (scope IN ('admin', 'rerank', 'read')),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Catalog. `content_hash` keys the item-summary cache: a changed item gets a new summary.
CREATE TABLE items (
    project       text NOT NULL REFERENCES projects(id),
    id            text NOT NULL,
    title         text NOT NULL,
    text          text,
    attributes    jsonb,
    content_hash  bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, id)
);

CREATE TABLE users (
    project     text NOT NULL REFERENCES projects(id),
    id          text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- bumped on every new interaction; keys the profile cache together with the history hash
    history_version bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, id)
);

-- Behaviour. (user, item, kind, ts) identifies an event, so re-sending it is a no-op.
-- History order is (ts, seq).
CREATE TABLE interactions (
    seq         bigserial,
    project     text NOT NULL,
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    kind        text NOT NULL DEFAULT 'interaction',
    value       double precision,
    ts          timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, user_id, item_id, kind, ts),
    FOREIGN KEY (project, user_id) REFERENCES users(project, id),
    FOREIGN KEY (project, item_id) REFERENCES items(project, id)
);
CREATE INDEX interactions_history ON interactions (project, user_id, ts, seq);
CREATE INDEX interactions_item ON interactions (project, item_id);

-- Prompts: six named prompts, immutable numbered versions, movable labels (with A/B splits).
CREATE TABLE prompts (
    project     text NOT NULL REFERENCES projects(id),
    name        text NOT NULL CHECK (name IN ('p_sum', 'p_gen', 'p_rank', 'p_fb', 'p_agg', 'p_opt')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, name)
);

CREATE TABLE prompt_versions (
    project     text NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    template    text NOT NULL,
    message     text NOT NULL DEFAULT '',
    -- where it came from: 'seed', 'api', or an optimization run
    source      text NOT NULL DEFAULT 'api',
    run_id      uuid,
    parent_version integer,
    scores      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, name, version),
    FOREIGN KEY (project, name) REFERENCES prompts(project, name)
);

-- A label points at one version, or splits traffic across several ({"version", "weight"} list).
CREATE TABLE prompt_labels (
    project     text NOT NULL,
    name        text NOT NULL,
    label       text NOT NULL,
    version     integer,
    split       jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, name, label),
    FOREIGN KEY (project, name, version) REFERENCES prompt_versions(project, name, version),
    CHECK ((version IS NULL) <> (split IS NULL))
);

-- Every label move, for audit and rollback.
CREATE TABLE prompt_label_history (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    name        text NOT NULL,
    label       text NOT NULL,
    version     integer,
    split       jsonb,
    moved_at    timestamptz NOT NULL DEFAULT now()
);

-- Caches of LLM work, keyed by everything that determines the output.
CREATE TABLE item_summaries (
    project         text NOT NULL,
    item_id         text NOT NULL,
    content_hash    bytea NOT NULL,
    prompt_version  integer NOT NULL,
    model           text NOT NULL,
    summary         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, item_id, content_hash, prompt_version, model)
);

CREATE TABLE user_profiles (
    id              uuid PRIMARY KEY,
    project         text NOT NULL,
    user_id         text NOT NULL,
    history_hash    bytea NOT NULL,
    prompt_version  integer NOT NULL,
    model           text NOT NULL,
    profile         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, user_id, history_hash, prompt_version, model)
);

-- One row per rerank answered, so feedback can be joined and used as training data.
CREATE TABLE rerank_requests (
    id              text PRIMARY KEY,
    project         text NOT NULL,
    user_id         text NOT NULL,
    candidates      jsonb NOT NULL,
    result_order    jsonb NOT NULL,
    prompt_name     text NOT NULL DEFAULT 'p_gen',
    prompt_version  integer,
    prompt_versions jsonb NOT NULL DEFAULT '{}',
    profile_id      uuid,
    model           text,
    fallback        text,
    repaired        boolean NOT NULL DEFAULT false,
    latency_ms      integer NOT NULL,
    usage           jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rerank_requests_user ON rerank_requests (project, user_id, created_at);

CREATE TABLE feedback (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    request_id  text NOT NULL REFERENCES rerank_requests(id),
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    kind        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, item_id, kind)
);

-- Durable background jobs (claimed with FOR UPDATE SKIP LOCKED under a lease).
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    project         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('optimization', 'evaluation', 'summarize_catalog')),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params          jsonb NOT NULL,
    progress        jsonb NOT NULL DEFAULT '{}',
    result          jsonb,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 3,
    cancel_requested boolean NOT NULL DEFAULT false,
    locked_by       text,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_claimable ON jobs (status, lease_until, created_at);

-- The steps of an optimization or evaluation run: each candidate prompt, its scores, the
-- decision and why; per-step cost. Unique per (job, step) so a resumed job never duplicates.
CREATE TABLE run_steps (
    job_id          uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step            integer NOT NULL,
    epoch           integer NOT NULL DEFAULT 0,
    batch           integer NOT NULL DEFAULT 0,
    kind            text NOT NULL,
    prompt_version  integer,
    scores          jsonb NOT NULL DEFAULT '{}',
    accepted        boolean,
    reason          text,
    usage           jsonb NOT NULL DEFAULT '{}',
    state           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step)
);

-- LLM response cache for deterministic calls: key = hash(provider, model, messages, params).
CREATE TABLE llm_cache (
    key         bytea PRIMARY KEY,
    model       text NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per LLM call (cache hits included), for cost reports per request and per job.
CREATE TABLE llm_usage (
    id                  bigserial PRIMARY KEY,
    project             text NOT NULL,
    role                text NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    latency_ms          integer NOT NULL,
    prompt_tokens       integer NOT NULL DEFAULT 0,
    completion_tokens   integer NOT NULL DEFAULT 0,
    cache_hit           boolean NOT NULL DEFAULT false,
    outcome             text NOT NULL,
    request_id          text,
    job_id              uuid,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_usage_job ON llm_usage (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX llm_usage_request ON llm_usage (request_id) WHERE request_id IS NOT NULL;
