-- Interleaved experiments (team-draft interleaving): users drawn into the treatment's share
-- see one list merged from the control's and the treatment's rankings; every position
-- remembers which arm (team) supplied it, and clicks credit the teams.

-- `ab` (users split between the arms) or `interleave` (users in the share see both, merged).
ALTER TABLE experiments ADD COLUMN design text NOT NULL DEFAULT 'ab'
    CHECK (design IN ('ab', 'interleave'));
-- The sequential sample-ratio check's always-valid p-value (the minimum over looks).
ALTER TABLE experiments ADD COLUMN srm_p double precision NOT NULL DEFAULT 1;

-- A label whose split interleaves: a user drawn into its last arm sees the first arm's and
-- the last arm's rankings merged.
ALTER TABLE prompt_labels ADD COLUMN interleave boolean NOT NULL DEFAULT false;
ALTER TABLE prompt_label_history ADD COLUMN interleave boolean NOT NULL DEFAULT false;

-- Per position of `result_order`, the team that supplied it: 'c' (control) or 't'
-- (treatment). NULL for a request that was not interleaved.
ALTER TABLE rerank_requests ADD COLUMN teams text;

-- The interleaved arm's credit: requests won by the treatment's team, by the control's,
-- tied (clicks on both teams equally); distinct positive items per team; and the per-user
-- preference (wins - losses) / (wins + losses) over users with a non-tie request.
ALTER TABLE experiment_arms
    ADD COLUMN wins                  bigint NOT NULL DEFAULT 0,
    ADD COLUMN losses                bigint NOT NULL DEFAULT 0,
    ADD COLUMN ties                  bigint NOT NULL DEFAULT 0,
    ADD COLUMN control_team_clicks   bigint NOT NULL DEFAULT 0,
    ADD COLUMN treatment_team_clicks bigint NOT NULL DEFAULT 0,
    ADD COLUMN pref_users            bigint NOT NULL DEFAULT 0,
    ADD COLUMN pref_sum              double precision NOT NULL DEFAULT 0,
    ADD COLUMN pref_sq_sum           double precision NOT NULL DEFAULT 0;
ALTER TABLE experiment_users
    ADD COLUMN wins   integer NOT NULL DEFAULT 0,
    ADD COLUMN losses integer NOT NULL DEFAULT 0;
