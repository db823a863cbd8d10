-- Whether a project's interaction order is chronological (real or file order that is
-- chronological, like LLMRank's Amazon files) or carries no time (Yelp core-40, Goodreads):
-- evaluation holds out the last item in the first case and a seeded random item in the second.
ALTER TABLE projects ADD COLUMN history_order text NOT NULL DEFAULT 'chronological'
    CHECK (history_order IN ('chronological', 'unordered'));
