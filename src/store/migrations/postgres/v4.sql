-- v4: Query/Retrieve (dicom::qr). Study ID is a required C-FIND key, kept
-- from now on (studies indexed before stay blank: the value is only in
-- their files); accession numbers and patient IDs, what a PACS or
-- workstation asks for most, each found by an index.
ALTER TABLE studies ADD COLUMN IF NOT EXISTS study_id TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
CREATE INDEX IF NOT EXISTS patients_patient_id ON patients(patient_id);
