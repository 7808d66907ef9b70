-- Schema version 6: quote indexes are counted per key, not per spelling of the xpub.
--
-- Hosts from this version on key the address-index counter and the one-holder-per-index
-- rule by the operator key's id (`key:` and a digest of the public key and chain code),
-- and move the rows an older host wrote under the xpub as typed onto it when they start.
-- An older host still running on the fleet would write under the typed string again, at
-- its own low counter, and hand out indexes that live quotes of the key already hold (two
-- quotes, one address). Raising the version keeps such a host from starting against this
-- store; the function below refuses, from here on, a counter named any other way, so one
-- already running fails its quote requests instead of handing out an address twice.
CREATE OR REPLACE FUNCTION coinop_quote_index(
    p_xpub text, p_floor bigint, p_free_before bigint, p_max_open bigint, p_tip integer,
    p_reuse boolean
) RETURNS TABLE (o_index bigint, o_reused boolean, o_open bigint, o_first_expiry bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_next bigint;
    v_index bigint;
    v_open bigint;
    v_first bigint;
BEGIN
    IF p_xpub NOT LIKE 'key:%' THEN
        RAISE EXCEPTION 'coinop_quote_index: "%" is an xpub as typed, not a key id: this '
            'host runs a coinopd older than the store''s schema (version 6); upgrade it',
            p_xpub USING ERRCODE = 'feature_not_supported';
    END IF;
    INSERT INTO coinop_quote_derivation (xpub, next_index) VALUES (p_xpub, p_floor)
    ON CONFLICT (xpub) DO NOTHING;
    SELECT d.next_index INTO v_next FROM coinop_quote_derivation d
    WHERE d.xpub = p_xpub FOR UPDATE;
    IF p_reuse THEN
        -- `NOT q.paid` again in the outer WHERE: a payment marked while this waited for the
        -- row is rechecked on the row itself, and such a quote is not retired.
        UPDATE coinop_quotes q SET retired_at_height = p_tip
        WHERE q.quote_id = (
                SELECT c.quote_id FROM coinop_quotes c
                WHERE c.xpub = p_xpub AND c.retired_at_height IS NULL AND NOT c.paid
                  AND c.expires_at_us <= p_free_before
                ORDER BY c.derivation_index LIMIT 1)
          AND q.retired_at_height IS NULL AND NOT q.paid
        RETURNING q.derivation_index INTO v_index;
        IF v_index IS NOT NULL THEN
            RETURN QUERY SELECT v_index, true, 0::bigint, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT count(*), min(c.expires_at_us) INTO v_open, v_first FROM coinop_quotes c
    WHERE c.xpub = p_xpub AND c.retired_at_height IS NULL AND NOT c.paid;
    IF v_open >= p_max_open THEN
        RETURN QUERY SELECT NULL::bigint, false, v_open, v_first;
        RETURN;
    END IF;
    v_index := greatest(v_next, p_floor);
    UPDATE coinop_quote_derivation SET next_index = v_index + 1 WHERE xpub = p_xpub;
    RETURN QUERY SELECT v_index, false, v_open, v_first;
END
$$;
