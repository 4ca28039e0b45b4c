-- v2: the relay outbox reads completions by their stamp instead of a
-- trigger on studies (the archive's tables carry nothing of the relay's);
-- an edge upgraded from a trigger-fed outbox loses it here.
DROP TRIGGER IF EXISTS relay_outbox_enqueue ON studies;
DROP FUNCTION IF EXISTS relay_outbox_enqueue();
CREATE INDEX IF NOT EXISTS studies_completed ON studies(completed_ms);
-- A study's first instance (the list's thumbnail: ORDER BY series_uid,
-- instance_number LIMIT 1 per study) straight from an index. Without it
-- PostgreSQL walked instances_series in order filtering by study: 6 s for
-- a clinic's study list and 0.3 s for a study's detail once the archive
-- held a million instance rows. It also serves every lookup by study, so
-- the single-column index goes (one index less to write per instance).
CREATE INDEX IF NOT EXISTS instances_study_order ON instances(study_uid, series_uid, instance_number);
DROP INDEX IF EXISTS instances_study;
