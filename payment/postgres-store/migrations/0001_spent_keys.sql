-- Schema version 1: the fleet-wide spent set.
--
-- One row per claimed key (an on-chain outpoint, kind 1, or a credit proof's Y, kind 2).
-- `state` is 1 (pending: the operation it guards has not delivered) or 2 (spent). Every row
-- names the host that claimed it and the operation (lease id, swap request) it guards, so
-- that a host restarting after a crash finds its own pending claims and settles them
-- against its local ledger.
CREATE TABLE coinop_spent_keys (
    kind smallint NOT NULL CHECK (kind IN (1, 2)),
    key bytea NOT NULL,
    state smallint NOT NULL CHECK (state IN (1, 2)),
    note text NOT NULL,
    receipt bytea CHECK (receipt IS NULL OR octet_length(receipt) = 32),
    host_id text NOT NULL,
    operation_id text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    spent_at timestamptz,
    PRIMARY KEY (kind, key)
);

-- Start-up reconciliation reads a host's pending claims.
CREATE INDEX coinop_spent_keys_pending_by_host
    ON coinop_spent_keys (host_id, operation_id) WHERE state = 1;

-- Claims every key, all or none, in one statement (one round trip). Two claimers of the
-- same key serialise on the primary key's unique index: the second waits for the first
-- to commit or roll back, then finds the key taken (ON CONFLICT DO NOTHING). If any key
-- was taken the function raises CO001, which undoes the whole statement, inserts of this
-- call included; the client then reads who holds the keys.
CREATE FUNCTION coinop_claim(
    p_kinds smallint[], p_keys bytea[], p_state smallint, p_note text, p_receipt bytea,
    p_host text, p_operation text
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO coinop_spent_keys
        (kind, key, state, note, receipt, host_id, operation_id, spent_at)
    SELECT k.kind, k.key, p_state, p_note, p_receipt, p_host, p_operation,
           CASE WHEN p_state = 2 THEN now() END
    FROM unnest(p_kinds, p_keys) AS k(kind, key)
    ON CONFLICT (kind, key) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted <> cardinality(p_keys) THEN
        RAISE EXCEPTION 'a spent-set key is already claimed' USING ERRCODE = 'CO001';
    END IF;
    RETURN inserted;
END
$$;

-- Ends this host's pending claim on every key, all or none: p_to = 2 marks them spent,
-- p_to = 0 forgets them. Raises CO002 (undoing the statement) if any key is not pending
-- under p_host.
CREATE FUNCTION coinop_settle(
    p_kinds smallint[], p_keys bytea[], p_host text, p_to smallint
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    settled integer;
BEGIN
    IF p_to = 2 THEN
        UPDATE coinop_spent_keys s SET state = 2, spent_at = now()
        FROM unnest(p_kinds, p_keys) AS k(kind, key)
        WHERE s.kind = k.kind AND s.key = k.key AND s.state = 1 AND s.host_id = p_host;
    ELSE
        DELETE FROM coinop_spent_keys s
        USING unnest(p_kinds, p_keys) AS k(kind, key)
        WHERE s.kind = k.kind AND s.key = k.key AND s.state = 1 AND s.host_id = p_host;
    END IF;
    GET DIAGNOSTICS settled = ROW_COUNT;
    IF settled <> cardinality(p_keys) THEN
        RAISE EXCEPTION 'a spent-set key is not pending under this host' USING ERRCODE = 'CO002';
    END IF;
    RETURN settled;
END
$$;
