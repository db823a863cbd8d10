-- Rate limits per API key and per project (issue 22): requests per second with a burst
-- (NULL: unlimited). A project's limit holds for all its keys together.
ALTER TABLE api_keys ADD COLUMN rate_per_second double precision
    CHECK (rate_per_second > 0 AND rate_per_second <= 1000000);
ALTER TABLE api_keys ADD COLUMN burst integer CHECK (burst >= 1 AND burst <= 1000000);
ALTER TABLE projects ADD COLUMN rate_per_second double precision
    CHECK (rate_per_second > 0 AND rate_per_second <= 1000000);
ALTER TABLE projects ADD COLUMN burst integer CHECK (burst >= 1 AND burst <= 1000000);

-- One token bucket per limited key (`key:<id>`) and per limited project (`project:<id>`),
-- shared by every replica: a replica takes a few tokens at a time (its local allowance), so a
-- request costs a database round trip only when its replica's allowance is used up. Buckets
-- untouched for a day are pruned by the leader's maintenance.
CREATE TABLE rate_buckets (
    bucket      text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);
