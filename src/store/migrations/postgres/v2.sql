-- v2: the relay outbox reads completions by their stamp instead of a
-- trigger on studies (the archive's tables carry nothing of the relay's);
-- an edge upgraded from a trigger-fed outbox loses it here.
DROP TRIGGER IF EXISTS relay_outbox_enqueue ON studies;
DROP FUNCTION IF EXISTS relay_outbox_enqueue();
CREATE INDEX IF NOT EXISTS studies_completed ON studies(completed_ms);
