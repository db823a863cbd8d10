-- Profiles refreshed ahead of time (issue 22): who wrote a profile, so a rerank can say
-- whether it used one written inline, by an earlier rerank, or by a refresh ahead.
ALTER TABLE user_profiles ADD COLUMN written_by text NOT NULL DEFAULT 'inline'
    CHECK (written_by IN ('inline', 'ahead'));
