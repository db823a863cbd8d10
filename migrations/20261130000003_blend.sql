-- Blends: how the production answer fuses the LLM ranking with non-LLM rankings. They live
-- in the prompt registry under the name 'blend' (immutable numbered versions, movable labels,
-- A/B splits, label history): a version's template is its weights as JSON. Every existing
-- project gets version 1, the LLM and the incoming order equally weighted, as 'production'.
ALTER TABLE prompts DROP CONSTRAINT prompts_name_check;
ALTER TABLE prompts ADD CONSTRAINT prompts_name_check
    CHECK (name IN ('p_sum', 'p_gen', 'p_rank', 'p_fb', 'p_agg', 'p_opt', 'blend'));
INSERT INTO prompts (project, name) SELECT id, 'blend' FROM projects ON CONFLICT DO NOTHING;
INSERT INTO prompt_versions (project, name, version, template, message, source)
SELECT id, 'blend', 1, '{"llm":1.0,"incoming":1.0,"popularity":0.0,"item_knn":0.0}',
       'default: the LLM and the incoming order, equally weighted', 'seed'
FROM projects ON CONFLICT DO NOTHING;
INSERT INTO prompt_labels (project, name, label, version)
SELECT id, 'blend', 'production', 1 FROM projects ON CONFLICT DO NOTHING;

-- Which blend answered each rerank ({"version": n or null, "weights": {...}}).
ALTER TABLE rerank_requests ADD COLUMN blend jsonb;
