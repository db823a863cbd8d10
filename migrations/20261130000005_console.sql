-- The console's overview reads the last hour of LLM usage per project.
CREATE INDEX llm_usage_created ON llm_usage (project, created_at);
