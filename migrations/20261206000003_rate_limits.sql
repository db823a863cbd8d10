-- Rate limits per API key (issue 22): requests per second with a burst (NULL: unlimited).
ALTER TABLE api_keys ADD COLUMN rate_per_second double precision
    CHECK (rate_per_second > 0 AND rate_per_second <= 1000000);
ALTER TABLE api_keys ADD COLUMN burst integer CHECK (burst >= 1 AND burst <= 1000000);

-- One token bucket per limited key, shared by every replica: a replica takes a few tokens at
-- a time (its local allowance), so a request costs a database round trip only when its
-- replica's allowance is used up.
CREATE TABLE rate_buckets (
    key_id      uuid PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);
