-- Schema version 3: the fleet's quotes and the address index they draw from.
--
-- Hosts configured with the same xpub derive the same addresses, so the index counter, the
-- quotes holding an index and the marks "a payment to this address exists" live here, for
-- the whole fleet. (Version 2 is the mint keysets' table, from another change.)

-- One row per xpub: the next never-derived index. Its row lock serialises every quote of
-- that xpub, on every host, from the allocation to the commit of the quote holding it.
CREATE TABLE coinop_quote_derivation (
    xpub text PRIMARY KEY,
    next_index bigint NOT NULL CHECK (next_index >= 0)
);

-- Every quote of the fleet. `paid` is set once a payment to its address was seen or
-- verified by any host (its index is then never reused); `retired_at_height` once a newer
-- quote took over its index (payments in blocks up to that height stay this quote's, those
-- above are the newer one's, whose `paid_above_height` is the same height).
CREATE TABLE coinop_quotes (
    quote_id text PRIMARY KEY,
    xpub text NOT NULL,
    derivation_index bigint NOT NULL CHECK (derivation_index >= 0),
    address text NOT NULL,
    script_pubkey bytea NOT NULL,
    amount_msat bigint NOT NULL CHECK (amount_msat >= 0),
    -- What the quote is for: 'lease' (leases, top-ups, legacy mints) or 'nut30' (a NUT-30
    -- mint quote, locked to a key: never a lease's payment).
    purpose text NOT NULL,
    created_at_us bigint NOT NULL,
    expires_at_us bigint NOT NULL,
    paid boolean NOT NULL DEFAULT false,
    paid_above_height integer,
    retired_at_height integer,
    host_id text NOT NULL
);

-- Never two live holders of one index (the allocation's lock already ensures it; this
-- makes a bug fail loudly instead of paying two tenants' quotes to one address).
CREATE UNIQUE INDEX coinop_quotes_index_holder
    ON coinop_quotes (xpub, derivation_index) WHERE retired_at_height IS NULL;
-- The reusable and open-unpaid lookups of the allocation.
CREATE INDEX coinop_quotes_unpaid_holders
    ON coinop_quotes (xpub, derivation_index) WHERE retired_at_height IS NULL AND NOT paid;
-- The scripts hosts watch blocks for.
CREATE INDEX coinop_quotes_watched
    ON coinop_quotes (expires_at_us) WHERE retired_at_height IS NULL;

-- Outputs paying a quote's script, written by whichever host fetched the block, so that
-- every host can honour `{"quote_id": Q}` without having seen the block itself. Each
-- reader still checks the block against its own header chain (best chain, depth).
CREATE TABLE coinop_quote_outputs (
    quote_id text NOT NULL REFERENCES coinop_quotes (quote_id),
    txid bytea NOT NULL CHECK (octet_length(txid) = 32),
    vout bigint NOT NULL CHECK (vout >= 0),
    block_hash bytea NOT NULL CHECK (octet_length(block_hash) = 32),
    height integer NOT NULL,
    block_time bigint NOT NULL,
    amount_sat bigint NOT NULL,
    coinbase boolean NOT NULL,
    seen_by text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (quote_id, txid, vout, block_hash)
);

-- Takes an index for a new quote of p_xpub, under the xpub's row lock (held by the caller's
-- transaction until it commits the quote): the lowest index of an unpaid quote that expired
-- before p_free_before, that quote retired at p_tip (when p_reuse); else, if fewer than
-- p_max_open unpaid quotes hold an index, the next new index (at least p_floor: indexes a
-- host handed out before it joined the fleet are never handed out again). Returns the index
-- (NULL when none is free), whether it was reused, and the open-unpaid count and earliest
-- expiry (for the refusal's Retry-After).
CREATE FUNCTION coinop_quote_index(
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
