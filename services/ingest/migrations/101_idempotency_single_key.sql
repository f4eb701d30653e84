-- The idempotency record is found by one 16-byte key, id = UUIDv5(SPM namespace,
-- tenant_id || U+001F || event_id), the same id ingest derives in Rust (spm_core::derived_id),
-- instead of the (tenant_id, event_id) pair. Most events publish one record: default 1.
ALTER TABLE idempotency ADD COLUMN id uuid;
DO $$
BEGIN
    -- Rows accepted before this migration get their id computed here (uuid-ossp is a
    -- trusted extension: a database owner may create it). A fresh database has none.
    IF EXISTS (SELECT 1 FROM idempotency) THEN
        CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
        EXECUTE $q$
            UPDATE idempotency
               SET id = uuid_generate_v5('5c1f3d2e-7b8a-4e61-9a0d-2f4b6c8e1a37'::uuid,
                                         tenant_id || chr(31) || event_id::text)
        $q$;
    END IF;
END
$$;
ALTER TABLE idempotency ALTER COLUMN id SET NOT NULL;
ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
ALTER TABLE idempotency ADD PRIMARY KEY (id);
ALTER TABLE idempotency ALTER COLUMN published SET DEFAULT 1;
