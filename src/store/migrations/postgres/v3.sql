-- v3: a dated study search (a month, a day) lists the newest study dates
-- first (archive::index::search_studies), the order of this index, so the
-- page is read off its end instead of sorting the whole range by received
-- time (a month at 1 M studies: 42 000 rows, 62-79 ms). The date-only
-- index is this one's prefix and goes.
CREATE INDEX IF NOT EXISTS studies_date_received ON studies(study_date, last_received_ms, study_uid);
DROP INDEX IF EXISTS studies_date;
-- The reading queue (the worklist's default view) in index order: a page
-- is the first rows of this index instead of a sort of every open entry
-- (60 000 at a million studies). store::worklist writes the query's state
-- filter with this exact text so the planner can prove the predicate.
CREATE INDEX IF NOT EXISTS worklist_open ON worklist(priority_rank, enqueued_ms, study_uid)
  WHERE state IN ('new', 'claimed', 'returned');
