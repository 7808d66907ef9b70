//! coinop leases: the ledger, the metering scheduler, the `coinopd` daemon and the `coinop`
//! CLI. (Skeleton: built by the lease issue.)
