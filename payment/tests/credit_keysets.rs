//! The keyset store: seed file created 0600, keys stable across reopen, rotation (old
//! keysets redeem, only the active one signs) and retirement.

mod credit_wallet;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use credit_wallet::*;
use payment::credit::keyset_store::STORE_FILE;
use payment::credit::nut_types::SwapRequest;
use payment::credit::{CreditError, Mint, MintLimits};
use payment::spent_set::{SpentSet, SqliteSpentSet};

fn reopen(t: &TestMint) -> Result<Mint, CreditError> {
    Mint::open(
        t.dir.path(),
        t.spent.clone() as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
}

#[test]
fn seed_file_is_private_and_keys_survive_reopen() {
    let t = test_mint();
    let path = t.dir.path().join(STORE_FILE);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let keys_before = t.mint.keys();
    let proofs = mint_proofs(&t.mint, &[2, 8]);
    let again = reopen(&t).unwrap();
    assert_eq!(again.keys(), keys_before);
    assert_eq!(again.active_keyset_id(), t.mint.active_keyset_id());
    // Notes signed before the restart redeem after it.
    assert_eq!(again.redeem(&proofs, "after restart").unwrap(), 10_000);
}

#[test]
fn distinct_state_dirs_get_distinct_seeds() {
    let a = test_mint();
    let b = test_mint();
    assert_ne!(a.mint.active_keyset_id(), b.mint.active_keyset_id());
}

#[test]
fn readable_seed_file_is_refused() {
    let t = test_mint();
    let path = t.dir.path().join(STORE_FILE);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(reopen(&t), Err(CreditError::Store { .. })));
}

#[test]
fn corrupt_seed_file_is_a_clear_error() {
    let t = test_mint();
    let path = t.dir.path().join(STORE_FILE);
    fs::write(&path, "{not json").unwrap();
    let err = reopen(&t).err().expect("corrupt file refused");
    assert!(err.to_string().contains(STORE_FILE), "{err}");
}

#[test]
fn rotation_keeps_old_notes_redeemable_but_only_the_new_keyset_signs() {
    let t = test_mint();
    let old_id = t.mint.active_keyset_id();
    let old_proofs = mint_proofs(&t.mint, &[4, 4]);
    let old_outputs = messages(&outputs(&old_id, &[8]));

    let new_id = t.mint.rotate().unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(t.mint.active_keyset_id(), new_id);

    let listed = t.mint.keysets().keysets;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.id == old_id && !k.active));
    assert!(listed.iter().any(|k| k.id == new_id && k.active));
    assert_eq!(t.mint.keys().keysets[0].id, new_id);
    assert_eq!(t.mint.keys_for(&old_id).unwrap().keysets[0].id, old_id);

    // Outputs for the old keyset: refused as inactive (12002), nothing spent.
    let err = t
        .mint
        .swap(&SwapRequest {
            inputs: old_proofs.clone(),
            outputs: old_outputs,
        })
        .unwrap_err();
    assert!(matches!(err, CreditError::InactiveKeyset { .. }));
    assert_eq!(err.cashu_code(), Some(12002));
    assert!(t.mint.mint(8, &messages(&outputs(&old_id, &[8]))).is_err());

    // Old notes swap into new-keyset notes.
    let pending = outputs(&new_id, &[8]);
    let sigs = t
        .mint
        .swap(&SwapRequest {
            inputs: old_proofs,
            outputs: messages(&pending),
        })
        .unwrap()
        .signatures;
    assert!(sigs.iter().all(|s| s.id == new_id));
    let new_proofs = unblind_all(&t.mint, &pending, &sigs);

    // Rotation survives reopen.
    let again = reopen(&t).unwrap();
    assert_eq!(again.active_keyset_id(), new_id);
    assert_eq!(again.redeem(&new_proofs, "lease").unwrap(), 8000);
}

/// A swap whose reply was lost is sent again after the operator rotated the keysets: its
/// outputs name the keyset that is inactive now, and it still gets its signatures again
/// (its inputs are spent: refusing it would lose the notes). Outputs on the old keyset that
/// it never signed, or signed for another request, are refused as before.
#[test]
fn a_swap_repeated_after_a_rotation_is_answered_again() {
    let t = test_mint();
    let old_id = t.mint.active_keyset_id();
    let proofs = mint_proofs(&t.mint, &[4, 4]);
    let pending = outputs(&old_id, &[8]);
    let request = SwapRequest {
        inputs: proofs.clone(),
        outputs: messages(&pending),
    };
    let first = t.mint.swap(&request).unwrap().signatures;

    t.mint.rotate().unwrap();
    let again = t
        .mint
        .swap(&request)
        .expect("the same swap, again")
        .signatures;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].c_.as_str()),
        (old_id.as_str(), first[0].c_.as_str())
    );
    assert_eq!(unblind_all(&t.mint, &pending, &again).len(), 1);

    // Never signed, on the old keyset: refused, and the fresh inputs stay unspent.
    let fresh = {
        let new_proofs = mint_proofs(&t.mint, &[8]);
        let err = t
            .mint
            .swap(&SwapRequest {
                inputs: new_proofs.clone(),
                outputs: messages(&outputs(&old_id, &[8])),
            })
            .unwrap_err();
        assert!(matches!(err, CreditError::InactiveKeyset { .. }), "{err}");
        new_proofs
    };
    // Signed before, but for the first swap: these inputs cannot have them.
    let err = t
        .mint
        .swap(&SwapRequest {
            inputs: fresh.clone(),
            outputs: messages(&pending),
        })
        .unwrap_err();
    assert_eq!(err.cashu_code(), Some(11003), "already signed: {err}");
    assert_eq!(t.mint.redeem(&fresh, "still unspent").unwrap(), 8000);
}

#[test]
fn retired_keysets_accept_nothing_and_the_active_one_cannot_be_retired() {
    let t = test_mint();
    let old_id = t.mint.active_keyset_id();
    let old_proofs = mint_proofs(&t.mint, &[16]);
    assert!(matches!(
        t.mint.retire(&old_id),
        Err(CreditError::Store { .. })
    ));

    t.mint.rotate().unwrap();
    t.mint.retire(&old_id).unwrap();
    let err = t.mint.redeem(&old_proofs, "late").unwrap_err();
    assert!(matches!(err, CreditError::RetiredKeyset { .. }));
    assert_eq!(err.cashu_code(), Some(12003));
    assert!(t.mint.keysets().keysets.iter().all(|k| k.id != old_id));
    assert!(reopen(&t).unwrap().redeem(&old_proofs, "late").is_err());
}

#[test]
fn spent_set_survives_reopen_of_the_sqlite_file() {
    let t = test_mint();
    let proofs = mint_proofs(&t.mint, &[1]);
    t.mint.redeem(&proofs, "lease").unwrap();
    let spent = Arc::new(SqliteSpentSet::open(&t.dir.path().join("spent.sqlite")).unwrap());
    let mint = Mint::open(
        t.dir.path(),
        spent as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
    .unwrap();
    assert!(matches!(
        mint.redeem(&proofs, "again"),
        Err(CreditError::AlreadySpent { .. })
    ));
}

/// A mint whose keyset list is kept elsewhere (a fleet's store): keys from the seed, the
/// list handed over, rotation refused locally, nothing written to the state dir; two such
/// mints with one seed and one list are one mint.
#[test]
fn a_mint_from_a_seed_adopts_the_list_it_is_given() {
    use payment::credit::keyset_store::{KeysetRecord, KeysetState};
    let dir = tempfile::tempdir().unwrap();
    let spent = || {
        Arc::new(SqliteSpentSet::open(&dir.path().join("spent.sqlite")).unwrap())
            as Arc<dyn SpentSet>
    };
    let seed = [9u8; 32];
    let first = [KeysetRecord {
        counter: 0,
        state: KeysetState::Active,
    }];
    let a = Mint::from_seed(seed, &first, spent(), MintLimits::default()).unwrap();
    let b = Mint::from_seed(seed, &first, spent(), MintLimits::default()).unwrap();
    assert_eq!(a.keys(), b.keys(), "one seed, one list: one mint");
    assert_eq!(a.derive_keyset_id(0).unwrap(), a.active_keyset_id());
    assert!(
        !dir.path().join(STORE_FILE).exists(),
        "no seed in the state dir"
    );
    assert!(matches!(a.rotate(), Err(CreditError::Store { .. })));

    // Notes of keyset 0 signed by `a`; the list rotated (by the store) and given to both.
    let old_id = a.active_keyset_id();
    let proofs = mint_proofs(&a, &[4, 4]);
    let rotated = [
        KeysetRecord {
            counter: 0,
            state: KeysetState::Inactive,
        },
        KeysetRecord {
            counter: 1,
            state: KeysetState::Active,
        },
    ];
    let new_id = a.adopt_keysets(&rotated).unwrap();
    assert_eq!(b.adopt_keysets(&rotated).unwrap(), new_id);
    assert_eq!(new_id, a.derive_keyset_id(1).unwrap());
    assert_eq!(a.keyset_records(), rotated);
    assert!(a.knows_keysets([old_id.as_str(), new_id.as_str()]));
    assert!(!a.knows_keysets(["00ffffffffffffff"]));

    // `b` redeems `a`'s old notes into new ones; the signatures are what
    // swap_signatures said they would be.
    let pending = outputs(&new_id, &[8]);
    let request = SwapRequest {
        inputs: proofs,
        outputs: messages(&pending),
    };
    let expected = b.swap_signatures(&request).unwrap();
    let swapped = b.swap(&request).unwrap();
    assert_eq!(swapped.signatures, expected);
    assert!(expected.iter().all(|s| s.id == new_id));
    // A list without an active keyset is refused, and the mint keeps its list.
    let none_active = [KeysetRecord {
        counter: 0,
        state: KeysetState::Inactive,
    }];
    assert!(a.adopt_keysets(&none_active).is_err());
    assert_eq!(a.active_keyset_id(), new_id);
}
