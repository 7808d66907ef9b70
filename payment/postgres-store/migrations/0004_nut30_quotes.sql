-- Schema version 4: NUT-30 on-chain mint quotes, fleet-wide.
--
-- A NUT-30 quote (its address and expiry are its coinop_quotes row, purpose 'nut30') is
-- locked to a NUT-20 key and keeps a balance: what confirmed payments to its address
-- credited, and what mints issued against that. Both move only in transactions that hold
-- the quote's row lock, on whichever host, so "issue at most what was paid" holds across
-- the fleet; amount_issued_sat <= amount_paid_sat is also checked by the database.
CREATE TABLE coinop_nut30_quotes (
    quote_id text PRIMARY KEY REFERENCES coinop_quotes (quote_id),
    pubkey text NOT NULL,
    amount_paid_sat bigint NOT NULL DEFAULT 0 CHECK (amount_paid_sat >= 0),
    amount_issued_sat bigint NOT NULL DEFAULT 0
        CHECK (amount_issued_sat >= 0 AND amount_issued_sat <= amount_paid_sat),
    host_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Each payment credited to a quote, by its receipt (the quote and the payment's outpoints):
-- the same payment proved again, on any host, credits nothing more. Its outpoints are
-- claimed `Spent` with the same receipt in coinop_spent_keys in the same transaction.
CREATE TABLE coinop_nut30_payments (
    receipt bytea PRIMARY KEY CHECK (octet_length(receipt) = 32),
    quote_id text NOT NULL REFERENCES coinop_nut30_quotes (quote_id),
    amount_sat bigint NOT NULL CHECK (amount_sat >= 0),
    host_id text NOT NULL,
    credited_at timestamptz NOT NULL DEFAULT now()
);

-- Each mint issued from a quote, by its operation (the quote and the outputs): its
-- signatures are the coinop_signed_outputs rows of that operation, delivered in the same
-- transaction, so the same mint again (any host) is answered with them.
CREATE TABLE coinop_nut30_issues (
    operation_id text PRIMARY KEY,
    quote_id text NOT NULL REFERENCES coinop_nut30_quotes (quote_id),
    amount_sat bigint NOT NULL CHECK (amount_sat >= 0),
    host_id text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now()
);
