//! Golden snapshots against a real coinopd process, the real coinop-vmm and the test guest
//! on /dev/kvm: an image declared with `snapshot` cold-boots its first lease and snapshots
//! itself beside it; later leases start by restore (the create reply says so) and their
//! guests run on from the snapshot, each on its own; a replaced kernel makes a new snapshot
//! and removes the old one; a corrupted snapshot still gives a lease (booted cold, the log
//! says why) and is discarded.

mod common;

use std::path::{Path, PathBuf};

use common::leases::{credit_payment, CreatedLease};
use common::{kvm_or_skip, plain_text, vmm_and_guest, wait_for, Daemon};
use serde_json::json;

/// The shape every lease here has, and so the snapshot directory's prefix.
const SHAPE_PREFIX: &str = "1c64m-";

/// The complete snapshot directories of `image` in the daemon's state dir.
fn snapshots(state: &Path, image: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state.join("snapshots").join(image)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(SHAPE_PREFIX))
                && p.join("state").is_file()
        })
        .collect();
    dirs.sort();
    dirs
}

/// Waits for a complete snapshot of `image` other than `not`; on a timeout the daemon's log
/// says what happened.
async fn wait_for_snapshot(d: &Daemon, image: &str, not: Option<&Path>) -> PathBuf {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = snapshots(&d.dir, image)
            .into_iter()
            .find(|dir| Some(dir.as_path()) != not);
        if let Some(dir) = found {
            return dir;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no golden snapshot of {image} written:\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The pool's slots parked and ready for a lease (marker `parked PID`), by lease id.
fn parked_slots(state: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state.join("pool")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with("parked ")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn create(d: &Daemon, image: &str) -> CreatedLease {
    let proofs = d.mint_credit(20).await;
    d.create_lease(json!({"vcpus": 1, "mem_mib": 64, "image": image,
                          "payment": credit_payment(&proofs)}))
        .await
}

fn start_of(lease: &CreatedLease) -> &str {
    lease.reply["boot"]["start"].as_str().unwrap_or("(none)")
}

/// The `count N` numbers on a console, in order.
fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count "))
        .filter_map(|n| n.split(' ').next()?.parse().ok())
        .collect()
}

/// Waits until the lease's console shows counting past `past`; returns its counts.
async fn counting_past(d: &Daemon, lease: &CreatedLease, past: u64) -> Vec<u64> {
    wait_for(
        async || {
            counts(&d.console(lease).await)
                .last()
                .is_some_and(|&n| n > past)
        },
        "the guest to count on",
    )
    .await;
    counts(&d.console(lease).await)
}

/// A copy of the test guest the test may replace, and a daemon offering it as `tg`
/// (mode=count) and `tgi` (mode=idle), both with golden snapshots.
async fn daemon_with_snapshot_images(state: &Path) -> (Daemon, PathBuf) {
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let kernel = state.join("tg-kernel.elf");
    std::fs::copy(&guest, &kernel).expect("copy the test guest");
    let tg = format!("tg={},snapshot,cmdline=mode=count", kernel.display());
    let tgi = format!("tgi={},snapshot,cmdline=mode=idle", kernel.display());
    let d = Daemon::spawn(state, &["--image", &tg, "--image", &tgi], &[]).await;
    (d, kernel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_after_the_first_start_by_restore_and_run_on_independently() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (d, _) = daemon_with_snapshot_images(state).await;

    let first = create(&d, "tg").await;
    assert_eq!(start_of(&first), "cold", "{}", first.reply);
    let snapshot = wait_for_snapshot(&d, "tg", None).await;
    let meta = std::fs::metadata(snapshot.join("memory")).expect("memory file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o444,
        "read-only to everyone"
    );

    // Jailed (root), the daemon builds lease slots ahead (its default pool): a restore
    // starts in one as a cold boot does, the snapshot's files handed to the parked child.
    let pooled = nix::unistd::geteuid().is_root();
    if pooled {
        wait_for(
            async || !parked_slots(state).is_empty(),
            "a lease slot built ahead",
        )
        .await;
    }
    let b = create(&d, "tg").await;
    let c = create(&d, "tg").await;
    for lease in [&b, &c] {
        assert_eq!(start_of(lease), "restore", "{}", lease.reply);
        let boot = &lease.reply["boot"];
        assert!(
            boot["guest_ready_us"].as_u64() >= boot["vmm_spawned_us"].as_u64(),
            "{boot}"
        );
    }
    if pooled {
        // b took the slot waited for (its id is the slot's), and its VMM was the slot's
        // parked child, not a jail built after a failed launch.
        let log = d.log();
        let started = plain_text(&log)
            .lines()
            .find(|l| l.contains("VMM started") && l.contains(&b.id))
            .map(String::from)
            .unwrap_or_default();
        assert!(
            started.contains("pooled=true") && state.join("pool").join(&b.id).is_file(),
            "the restored lease {} started in a slot built ahead:\n{log}",
            b.id
        );
    }
    // Restored guests continue the snapshotted one: no boot banner, the count goes on
    // without restarting or skipping.
    let b_counts = counting_past(&d, &b, 5).await;
    let b_text = &d.console(&b).await;
    assert!(!b_text.contains("coinop-testguest ready"), "{b_text}");
    assert!(
        b_counts.windows(2).all(|w| w[1] == w[0] + 1),
        "{b_counts:?}"
    );

    // Independent: stopping one leaves the other counting.
    d.stop_lease(&b.id, &b.token).await;
    let before = *counts(&d.console(&c).await).last().unwrap_or(&0);
    let c_counts = counting_past(&d, &c, before + 10).await;
    assert!(
        c_counts.windows(2).all(|w| w[1] == w[0] + 1),
        "{c_counts:?}"
    );
    let view = d
        .call("GET", &format!("/v1/leases/{}", c.id), Some(&c.token), None)
        .await
        .json();
    assert_eq!(view["boot"]["start"], "restore", "{view}");
    assert!(
        matches!(view["state"].as_str(), Some("running" | "paused_unfunded")),
        "{view}"
    );

    // An idle guest (halted, never exiting to the VMM) restored still reports guest_ready.
    let idle = create(&d, "tgi").await;
    assert_eq!(start_of(&idle), "cold");
    wait_for_snapshot(&d, "tgi", None).await;
    let idle2 = create(&d, "tgi").await;
    assert_eq!(start_of(&idle2), "restore", "{}", idle2.reply);
    assert!(idle2.reply["boot"]["guest_ready_us"].as_u64().is_some());

    for lease in [&first, &c, &idle, &idle2] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_kernel_or_a_corrupt_snapshot_gives_a_cold_boot_and_a_new_snapshot() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (d, kernel) = daemon_with_snapshot_images(state).await;
    let mut leases = vec![create(&d, "tg").await];
    let old = wait_for_snapshot(&d, "tg", None).await;

    // The same bytes under a new inode: another kernel file, so another snapshot.
    let fresh = state.join("tg-kernel.new");
    std::fs::copy(&kernel, &fresh).expect("copy");
    std::fs::rename(&fresh, &kernel).expect("replace the kernel");
    let after_replace = create(&d, "tg").await;
    assert_eq!(start_of(&after_replace), "cold", "{}", after_replace.reply);
    leases.push(after_replace);
    let new = wait_for_snapshot(&d, "tg", Some(&old)).await;
    wait_for(
        async || !old.exists(),
        "the outdated snapshot to be removed",
    )
    .await;
    let restored = create(&d, "tg").await;
    assert_eq!(start_of(&restored), "restore", "{}", restored.reply);
    leases.push(restored);

    // Corrupt the state file (the checksum catches it): the lease still starts, cold.
    let state_file = new.join("state");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&state_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = std::fs::read(&state_file).expect("read state");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&state_file, &bytes).expect("corrupt state");
    let after_corruption = create(&d, "tg").await;
    assert_eq!(
        start_of(&after_corruption),
        "cold",
        "{}",
        after_corruption.reply
    );
    let text = counting_past(&d, &after_corruption, 2).await;
    assert!(!text.is_empty());
    leases.push(after_corruption);
    assert!(!new.exists(), "the bad snapshot is discarded");
    let log = d.log();
    assert!(
        log.contains("restore failed") && log.contains("snapshot state is corrupt"),
        "the log says why:\n{log}"
    );
    // And the next lease of the image builds it again.
    leases.push(create(&d, "tg").await);
    wait_for_snapshot(&d, "tg", None).await;

    for lease in &leases {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// The snapshot directories of every image, as `IMAGE/NAME`, sorted.
fn all_snapshots(state: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let images = std::fs::read_dir(state.join("snapshots"))
        .into_iter()
        .flatten();
    for image in images.flatten() {
        let entries = std::fs::read_dir(image.path()).into_iter().flatten();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                found.push(format!("{}/{name}", image.file_name().to_string_lossy()));
            }
        }
    }
    found.sort();
    found
}

/// Whether a complete snapshot of `image` in the shape `prefix` (`1c64m-`) is there.
fn has_snapshot(state: &Path, image: &str, prefix: &str) -> bool {
    let dir = state.join("snapshots").join(image);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().starts_with(prefix) && e.path().join("state").is_file()
        })
}

/// A lease of `image` with `mem_mib`, stopped at once; how it started.
async fn create_and_stop(d: &Daemon, image: &str, mem_mib: u64) -> String {
    let proofs = d.mint_credit(20).await;
    let lease = d
        .create_lease(json!({"vcpus": 1, "mem_mib": mem_mib, "image": image,
                             "payment": credit_payment(&proofs)}))
        .await;
    d.stop_lease(&lease.id, &lease.token).await;
    start_of(&lease).to_string()
}

/// Snapshots are a bounded cache (`--max-golden-snapshots`): leases of three shapes leave
/// two, a build beyond the bound removing the least recently used. Here that is not the
/// oldest build: the first shape was restored from since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_beyond_the_bound_removes_the_least_recently_used_snapshot() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let tg = format!("tg={},snapshot,cmdline=mode=count", guest.display());
    let d = Daemon::spawn(state, &["--image", &tg, "--max-golden-snapshots", "2"], &[]).await;
    for mem in [64, 72] {
        assert_eq!(create_and_stop(&d, "tg", mem).await, "cold");
        let prefix = format!("1c{mem}m-");
        wait_for(
            async || has_snapshot(state, "tg", &prefix),
            "the shape's snapshot",
        )
        .await;
    }
    assert_eq!(create_and_stop(&d, "tg", 64).await, "restore");

    assert_eq!(create_and_stop(&d, "tg", 80).await, "cold");
    // Logged once the build is done, the bound kept.
    wait_for(
        async || {
            plain_text(&d.log())
                .matches("golden snapshot written")
                .count()
                == 3
        },
        "the third shape's snapshot",
    )
    .await;
    let left = all_snapshots(state);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].starts_with("tg/1c64m-"),
        "restored from last: {left:?}"
    );
    assert!(left[1].starts_with("tg/1c80m-"), "built last: {left:?}");
    assert_eq!(create_and_stop(&d, "tg", 64).await, "restore");
    d.shutdown().await;
}

/// At start coinopd removes the snapshots no lease will restore from again: those of an
/// image gone from its catalogue, and those under a key that is not current (made for
/// another kernel, command line or coinop-vmm binary); a current one stays and is restored
/// from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removes_the_snapshots_of_images_gone_and_of_outdated_keys() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (d, kernel) = daemon_with_snapshot_images(state).await;
    for image in ["tg", "tgi"] {
        assert_eq!(create_and_stop(&d, image, 64).await, "cold");
        wait_for_snapshot(&d, image, None).await;
    }
    let current = snapshots(state, "tg");
    d.shutdown().await;
    let outdated = state
        .join("snapshots")
        .join("tg")
        .join("1c64m-00000000000000000000000000000000");
    std::fs::create_dir(&outdated).expect("an outdated snapshot");
    std::fs::write(outdated.join("state"), b"old").expect("its state");

    // The same tg, and no tgi.
    let tg = format!("tg={},snapshot,cmdline=mode=count", kernel.display());
    let d = Daemon::spawn(state, &["--image", &tg], &[]).await;
    assert!(!state.join("snapshots").join("tgi").exists(), "{}", d.log());
    assert!(!outdated.exists(), "{}", d.log());
    assert_eq!(snapshots(state, "tg"), current, "the current one stays");
    assert_eq!(create_and_stop(&d, "tg", 64).await, "restore");
    d.shutdown().await;
}

/// Where coinopd keeps `lease`'s root-disk overlay.
fn overlay_of(state: &Path, lease: &CreatedLease) -> PathBuf {
    state.join("overlays").join(format!("{}.overlay", lease.id))
}

/// A golden snapshot of an image with a root disk keeps the golden VMM's flushed overlay,
/// read-only; a lease restored from it starts on a copy of it (0600, its own), whatever the
/// golden guest wrote there; a cold boot starts on an empty one. The test guest has no disk
/// driver, so the golden guest's writes are put into the stored overlay by the test (in
/// the overlay's own format), as a guest's would be before its ready point.
async fn restored_leases_continue_on_the_golden_guests_disk(pool: &str) {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    const BASE_LEN: u64 = 1 << 20;
    let base = state.join("root.img");
    std::fs::write(&base, vec![7u8; BASE_LEN as usize]).expect("base image");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let image = format!(
        "tgd={},rootfs={},snapshot,cmdline=mode=idle",
        guest.display(),
        base.display()
    );
    let d = Daemon::spawn(
        state,
        &[
            "--image",
            &image,
            "--guest-network",
            "never",
            "--jail-pool",
            pool,
            "--disk-bytes-per-s-per-vcpu",
            "3000000",
            "--disk-iops-per-vcpu",
            "77",
        ],
        &[],
    )
    .await;
    // The overlay's layout (vmm/src/devices/virtio/cow_overlay.rs): data at its own
    // offsets, one bitmap bit per 512-byte sector, a 16-byte footer.
    let bitmap_at = BASE_LEN;
    let overlay_len = BASE_LEN + BASE_LEN / 512 / 8 + 16;

    let first = create(&d, "tgd").await;
    assert_eq!(start_of(&first), "cold", "{}", first.reply);
    let cold = std::fs::read(overlay_of(state, &first)).expect("the cold lease's overlay");
    assert_eq!(cold.len() as u64, overlay_len);
    assert!(
        cold[..overlay_len as usize - 16].iter().all(|&b| b == 0),
        "a cold boot starts on an empty overlay"
    );

    let snapshot = wait_for_snapshot(&d, "tgd", None).await;
    let kept = snapshot.join("overlay");
    let meta = std::fs::metadata(&kept).unwrap_or_else(|e| {
        panic!(
            "the golden VMM's overlay kept in {}: {e}\n{}",
            snapshot.display(),
            d.log()
        )
    });
    assert_eq!(meta.permissions().mode() & 0o777, 0o444, "read-only");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(meta.uid(), 0, "root's, not the golden jail's uid");
    }
    let golden = std::fs::read(&kept).expect("read");
    assert_eq!(golden.len() as u64, overlay_len, "flushed, with its footer");
    assert_eq!(&golden[overlay_len as usize - 16..][..8], b"COINOPOV");

    // What the golden guest would have written before its ready point: sector 3.
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&kept)
        .expect("open");
    file.write_all_at(&[0x5a; 512], 3 * 512).expect("data");
    file.write_all_at(&[1 << 3], bitmap_at).expect("bitmap bit");
    drop(file);
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let golden = std::fs::read(&kept).expect("read");

    let jailed = nix::unistd::geteuid().is_root();
    if jailed && pool != "0" {
        wait_for(
            async || !parked_slots(state).is_empty(),
            "a lease slot built ahead",
        )
        .await;
    }
    let restored = create(&d, "tgd").await;
    assert_eq!(
        start_of(&restored),
        "restore",
        "{}\n{}",
        restored.reply,
        d.log()
    );
    if jailed {
        let log = plain_text(&d.log());
        let pooled = log.lines().any(|l| {
            l.contains("VMM started") && l.contains(&restored.id) && l.contains("pooled=true")
        });
        assert_eq!(pooled, pool != "0", "the path under test was taken:\n{log}");
    }
    // The restored VMM gets the disk rates too (the snapshot keeps tokens, not rates).
    let pid = common::lease_pid::lease_pid(state, &restored.id);
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the VMM's argv");
    let argv: Vec<String> = argv
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let disk = argv
        .iter()
        .position(|a| a == "--disk")
        .and_then(|i| argv.get(i + 1))
        .unwrap_or_else(|| panic!("a --disk in {argv:?}"));
    assert!(disk.ends_with(",bw=3000000,iops=77"), "{argv:?}");
    let own = overlay_of(state, &restored);
    let copy = std::fs::read(&own).expect("the restored lease's overlay");
    assert!(
        copy == golden,
        "the restored lease's overlay is the golden one (sector 3 and its bit)"
    );
    let meta = std::fs::metadata(&own).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if jailed {
        assert_ne!(meta.uid(), 0, "owned by the lease's jail uid");
    }
    // Sparse: the copy holds the footer and a sector, not the megabyte of disk.
    assert!(
        meta.blocks() * 512 < BASE_LEN / 2,
        "{} bytes allocated",
        meta.blocks() * 512
    );

    for lease in [&first, &restored] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_lease_in_a_slot_built_ahead_continues_on_the_golden_disk() {
    restored_leases_continue_on_the_golden_guests_disk("2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_lease_in_a_jail_built_on_request_continues_on_the_golden_disk() {
    restored_leases_continue_on_the_golden_guests_disk("0").await;
}

/// A golden snapshot build boots a guest of the lease's shape, which counts against the
/// host's capacity like a lease: on a host with room for the lease alone, no build runs
/// beside it (the log says why), and the lease is the only room held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_build_runs_on_a_host_without_room_for_it() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let tgi = format!("tgi={},snapshot,cmdline=mode=idle", guest.display());
    let d = Daemon::spawn(
        state,
        &[
            "--image",
            &tgi,
            "--capacity-mib",
            "64",
            "--warm-restores",
            "0",
        ],
        &[],
    )
    .await;
    let lease = create(&d, "tgi").await;
    assert_eq!(start_of(&lease), "cold", "{}", lease.reply);
    wait_for(
        async || plain_text(&d.log()).contains("no room for a golden snapshot build now"),
        "the build to be skipped for want of room",
    )
    .await;
    assert!(
        snapshots(state, "tgi").is_empty(),
        "a build ran without room"
    );
    let host = d.call("GET", "/v1/host", None, None).await.json();
    assert_eq!(host["capacity"]["mib_free"], 0, "{host}");
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}
