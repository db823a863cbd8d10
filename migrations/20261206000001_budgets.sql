-- LLM budgets per project (issue 22): tokens per hour and per day, separately for interactive
-- work (reranks) and background work (jobs, refreshes), and optionally a cost (in the currency
-- of the configured per-model prices, `--llm-price`). NULL = unlimited.
CREATE TABLE llm_budgets (
    project                     text PRIMARY KEY,
    interactive_tokens_per_hour bigint CHECK (interactive_tokens_per_hour >= 0),
    interactive_tokens_per_day  bigint CHECK (interactive_tokens_per_day >= 0),
    background_tokens_per_hour  bigint CHECK (background_tokens_per_hour >= 0),
    background_tokens_per_day   bigint CHECK (background_tokens_per_day >= 0),
    interactive_cost_per_hour   double precision CHECK (interactive_cost_per_hour >= 0),
    interactive_cost_per_day    double precision CHECK (interactive_cost_per_day >= 0),
    background_cost_per_hour    double precision CHECK (background_cost_per_hour >= 0),
    background_cost_per_day     double precision CHECK (background_cost_per_day >= 0),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

-- Tokens (and cost, in millionths of the price currency) spent per project, class and UTC
-- hour: the truth every replica checks before an upstream call of a project with a budget
-- (the hour's row and the day's rows). Rows older
-- than two days are pruned by the leader's hourly maintenance.
CREATE TABLE llm_spend (
    project     text NOT NULL,
    class       text NOT NULL CHECK (class IN ('interactive', 'background')),
    hour        timestamptz NOT NULL,
    tokens      bigint NOT NULL DEFAULT 0,
    cost_micros bigint NOT NULL DEFAULT 0,
    calls       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, class, hour)
);

-- A job whose background budget is spent waits (still running, lease kept) until the window
-- rolls; these say so to whoever reads the job.
ALTER TABLE jobs ADD COLUMN paused_until timestamptz;
ALTER TABLE jobs ADD COLUMN pause_reason text;
