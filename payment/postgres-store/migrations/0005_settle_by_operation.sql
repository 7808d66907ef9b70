-- Schema version 5: a settle names the operation whose pending claim it ends.
--
-- coinop_settle (version 1) ends this host's pending claim on each key whatever operation
-- made it. So a release retried after its reply was lost, once the keys had been fenced
-- again by another operation of the same host (the tenant's retry), deleted that
-- operation's claim; its commit then found nothing pending, and the key, spent on the
-- host, was free in the store for every other host.
--
-- coinop_settle_operation ends p_operation's claim only. Release (p_to = 0) forgets the
-- keys p_operation holds pending under p_host and leaves every other row alone; it returns
-- how many it forgot. Commit (p_to = 2) marks p_operation's pending keys spent and records
-- spent under p_host and p_operation each key nobody holds (the host's ledger spent it, so
-- the store must hold it too, whatever became of the claim); a key held by anyone else is
-- left as it is. It returns how many of the keys p_operation holds spent afterwards, so
-- the caller can tell the keys held elsewhere and report them.
-- coinop_settle stays for the spent-set trait, which names no operation.
CREATE OR REPLACE FUNCTION coinop_settle_operation(
    p_kinds smallint[], p_keys bytea[], p_host text, p_operation text, p_to smallint
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF p_to = 2 THEN
        UPDATE coinop_spent_keys s SET state = 2, spent_at = now()
        FROM unnest(p_kinds, p_keys) AS k(kind, key)
        WHERE s.kind = k.kind AND s.key = k.key AND s.state = 1
          AND s.host_id = p_host AND s.operation_id = p_operation;
        INSERT INTO coinop_spent_keys
            (kind, key, state, note, receipt, host_id, operation_id, spent_at)
        SELECT k.kind, k.key, 2,
               'spent on its host; its pending claim was gone at the commit',
               NULL, p_host, p_operation, now()
        FROM unnest(p_kinds, p_keys) AS k(kind, key)
        ON CONFLICT (kind, key) DO NOTHING;
        SELECT count(*) INTO n
        FROM unnest(p_kinds, p_keys) AS k(kind, key)
        JOIN coinop_spent_keys s ON s.kind = k.kind AND s.key = k.key
        WHERE s.state = 2 AND s.host_id = p_host AND s.operation_id = p_operation;
    ELSE
        DELETE FROM coinop_spent_keys s
        USING unnest(p_kinds, p_keys) AS k(kind, key)
        WHERE s.kind = k.kind AND s.key = k.key AND s.state = 1
          AND s.host_id = p_host AND s.operation_id = p_operation;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    RETURN n;
END
$$;
