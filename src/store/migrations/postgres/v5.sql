-- v5: API tokens for machine clients of DICOMweb (viewers, PACS), owned by
-- reading::tokens. Only the token's SHA-256 is stored; revoked_ms set means
-- revoked (the row stays, so the audit trail's token:NAME keeps its name).
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT COLLATE "C" PRIMARY KEY,
    token_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    scope TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_ms BIGINT
);
