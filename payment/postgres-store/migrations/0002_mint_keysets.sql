-- Schema version 2: the fleet's mint keysets and the blind signatures it handed out.
--
-- Keysets: metadata only. Every host derives the keys themselves from the mint seed it
-- holds as a secret file (BIP32 path m/0'/0'/{derivation_index}'/{log2 amount}'), so the
-- database never holds a private key; a host whose seed derives another id for a row
-- refuses to serve. `state` is 1 (active: signs outputs and accepts inputs; exactly one
-- per unit), 2 (inactive: accepts inputs only) or 3 (retired: accepts nothing).
CREATE TABLE coinop_mint_keysets (
    id text PRIMARY KEY,
    unit text NOT NULL,
    derivation_index integer NOT NULL CHECK (derivation_index >= 0),
    state smallint NOT NULL CHECK (state IN (1, 2, 3)),
    input_fee_ppk bigint NOT NULL CHECK (input_fee_ppk >= 0),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (unit, derivation_index)
);

-- At most one active keyset per unit: two hosts rotating at once cannot both win.
CREATE UNIQUE INDEX coinop_mint_keysets_one_active
    ON coinop_mint_keysets (unit) WHERE state = 1;

-- Signed blinded messages: one row per B_ (33-byte compressed point) the fleet signed,
-- with the signature as handed out (C_ and the NUT-12 DLEQ proof). The primary key makes
-- "a B_ is signed at most once" hold across hosts (NUT-00 code 11003). `state` is 1
-- (pending: reserved by host_id for operation_id, whose local commit has not been
-- confirmed) or 2 (delivered). NUT-09 restore hands out delivered rows only.
CREATE TABLE coinop_signed_outputs (
    b_ bytea PRIMARY KEY CHECK (octet_length(b_) = 33),
    keyset_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    c_ bytea NOT NULL CHECK (octet_length(c_) = 33),
    dleq_e bytea CHECK (dleq_e IS NULL OR octet_length(dleq_e) = 32),
    dleq_s bytea CHECK (dleq_s IS NULL OR octet_length(dleq_s) = 32),
    state smallint NOT NULL CHECK (state IN (1, 2)),
    host_id text NOT NULL,
    operation_id text NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);

-- Settling an operation and start-up reconciliation read a host's pending rows.
CREATE INDEX coinop_signed_outputs_pending_by_host
    ON coinop_signed_outputs (host_id, operation_id) WHERE state = 1;

-- Reserves every B_ with its signature, all or none, in one statement: as coinop_claim,
-- two reservers of one B_ serialise on the primary key, and if any B_ was taken the
-- function raises CO003, undoing this call's inserts; the client then reads the holders
-- (a repeat of its own reservation is not a conflict).
CREATE FUNCTION coinop_reserve_outputs(
    p_b bytea[], p_keysets text[], p_amounts bigint[], p_c bytea[], p_e bytea[],
    p_s bytea[], p_host text, p_operation text
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO coinop_signed_outputs
        (b_, keyset_id, amount, c_, dleq_e, dleq_s, state, host_id, operation_id)
    SELECT o.b, o.keyset, o.amount, o.c, o.e, o.s, 1, p_host, p_operation
    FROM unnest(p_b, p_keysets, p_amounts, p_c, p_e, p_s) AS o(b, keyset, amount, c, e, s)
    ON CONFLICT (b_) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted <> cardinality(p_b) THEN
        RAISE EXCEPTION 'a blinded message is already signed' USING ERRCODE = 'CO003';
    END IF;
    RETURN inserted;
END
$$;
