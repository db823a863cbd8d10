-- Rows written through the local journal (store/journal.rs) may be replayed after a crash:
-- usage rows get an id of their own so a replay never stores one twice. Old rows keep NULL
-- (a unique index allows any number of NULLs).
ALTER TABLE llm_usage ADD COLUMN uid uuid;
CREATE UNIQUE INDEX llm_usage_uid ON llm_usage (uid);
