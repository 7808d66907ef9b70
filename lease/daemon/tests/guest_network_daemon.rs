//! coinopd with `--guest-network always`, run in a throwaway network namespace (its taps,
//! addresses and rules live and die there): a lease's create reply and GET say how to
//! reach the guest, the jailed VMM holds the lease's tap (passed as `--net fd=5`, the
//! guest's command line carries its address and SSH key), and stopping the lease removes
//! the tap and its rules; an `agent` image's leases with a NIC restore from a golden snapshot,
//! each with its own tap, MAC and personalisation line. The test guest ignores the NIC;
//! the Linux lab drives one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use coinop_cli::client::Client;
use serde_json::{json, Value};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly0123456789abcdefgh tenant@test";

/// coinopd in its own network namespace; on drop its VMMs (jailed VMMs are its direct
/// children) and then coinopd are killed, so nothing outlives the test, passed or failed.
struct NetnsDaemon {
    child: Child,
}

impl Drop for NetnsDaemon {
    fn drop(&mut self) {
        let children = children_of(self.child.id());
        for &pid in &children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed VMM takes a moment to tear its VM down; wait, so that the state dir's
        // guard finds nothing left to kill.
        let deadline = Instant::now() + Duration::from_secs(5);
        while children
            .iter()
            .any(|&p| coinopd::guest_stop::vmm_running(p))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == format!("PPid:\t{parent}"))
        })
        .collect()
}

impl NetnsDaemon {
    fn spawn(dir: &Path, vmm: &Path, guest: &Path, extra: &[&str]) -> (NetnsDaemon, Client) {
        use std::os::unix::process::CommandExt;
        let socket = dir.join("coinop.sock");
        let log = std::fs::File::create(dir.join("coinopd.log")).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinopd"));
        cmd.arg("--state-dir")
            .arg(dir)
            .arg("--socket")
            .arg(&socket)
            .args([
                "--tick-ms",
                "50",
                "--capacity-vcpus",
                "8",
                "--capacity-mib",
                "2048",
            ])
            .arg("--vmm-bin")
            .arg(vmm)
            .arg("--testguest")
            .arg(guest)
            .args(["--guest-ssh-host", "test-host"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: unshare is async-signal-safe and touches only the forked child.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("start coinopd");
        let daemon = NetnsDaemon { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "coinopd did not bind: {}",
                daemon.log(dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (daemon, Client::new(&socket))
    }

    /// POST /v1/leases with `body`; asserts the 201, showing the daemon's log (under
    /// `dir`) when it is not.
    async fn create_lease(&self, client: &Client, dir: &Path, body: Value) -> Value {
        let created = call(client, "POST", "/v1/leases", None, body).await;
        assert_eq!(created["http_status"], 201, "{created}\n{}", self.log(dir));
        created
    }

    /// A lease of `image` (1 vCPU, 64 MiB, the tenant's key), paid on chain: its 201.
    async fn paid_lease(&self, client: &Client, dir: &Path, image: &str) -> Value {
        let payment = pay(client).await;
        let body = json!({"vcpus": 1, "mem_mib": 64, "image": image, "ssh_key": SSH_KEY,
                          "payment": payment});
        self.create_lease(client, dir, body).await
    }

    fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("coinopd.log")).unwrap_or_default()
    }

    /// Runs `program args` in coinopd's network namespace.
    fn run_inside(&self, program: &str, args: &[&str]) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg(program)
            .args(args)
            .output()
            .expect("nsenter");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

async fn call(c: &Client, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let body = (!body.is_null()).then(|| serde_json::to_vec(&body).expect("json"));
    let r = c
        .call(method, path, token, body)
        .await
        .expect("coinopd answers");
    let mut v = r.json();
    v["http_status"] = json!(r.status);
    v
}

/// GET /v1/leases/{id}; the answer with its `http_status`.
async fn show(c: &Client, id: &str, token: &str) -> Value {
    call(
        c,
        "GET",
        &format!("/v1/leases/{id}"),
        Some(token),
        Value::Null,
    )
    .await
}

/// POST /v1/leases/{id}/stop with an empty body; the answer with its `http_status`.
async fn stop(c: &Client, id: &str, token: &str) -> Value {
    call(
        c,
        "POST",
        &format!("/v1/leases/{id}/stop"),
        Some(token),
        json!({}),
    )
    .await
}

/// The child of `parent` holding a tun fd attached to `tap` (the tun driver's fdinfo says
/// `iff:`; other tests' daemons have taps of the same name in their own namespaces).
fn holder_of(tap: &str, parent: u32) -> Option<(i32, String)> {
    for proc_dir in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(proc_dir.path().join("status")).unwrap_or_default();
        if !status.lines().any(|l| l == format!("PPid:\t{parent}")) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if info.lines().any(|l| l == format!("iff:\t{tap}")) {
                let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
                let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                return Some((pid, args));
            }
        }
    }
    None
}

async fn pay(client: &Client) -> Value {
    let quote = call(
        client,
        "POST",
        "/v1/quotes",
        None,
        json!({"vcpus": 1, "mem_mib": 64, "seconds": 600}),
    )
    .await;
    let quote_id = quote["quote_id"].as_str().expect("quote_id");
    coinop_cli::regtest_pay::pay_quote(client, quote_id)
        .await
        .expect("regtest payment")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// coinop-vmm and the test guest when this host can run a networked, jailed lease (root
/// and /dev/kvm); prints the SKIPPED line and gives `None` when it cannot.
fn root_kvm_or_skip() -> Option<(PathBuf, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: guest networking and the jail need root");
        return None;
    }
    if !common::kvm_or_skip() {
        return None;
    }
    Some(common::vmm_and_guest().expect("checked by kvm_or_skip"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_networking_is_reachable_jailed_and_cleaned_up() {
    let Some((vmm, guest)) = root_kvm_or_skip() else {
        return;
    };
    // Reaps any VMM of this state dir that outlived the test, after the daemon guard.
    let dir = common::StateDir::new();
    let state: PathBuf = dir.path().to_path_buf();
    let (daemon, client) = NetnsDaemon::spawn(&state, &vmm, &guest, &["--guest-network", "always"]);

    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "ssh_key": SSH_KEY,
                      "cmdline": "mode=cmdline", "payment": pay(&client).await});
    let created = daemon.create_lease(&client, &state, body).await;
    let net = &created["network"];
    assert_eq!(net["guest_ip"], "10.213.0.2", "{created}");
    assert_eq!(net["host_ip"], "10.213.0.1");
    assert_eq!(net["prefix_len"], 30);
    assert_eq!(net["mac"], "02:c0:1e:00:00:00");
    assert_eq!(net["ssh"], json!({"host": "test-host", "port": 22000}));
    let tap = net["tap"].as_str().expect("tap").to_string();
    let id = created["lease_id"].as_str().expect("id").to_string();
    let token = created["token"].as_str().expect("token").to_string();

    let addr = daemon
        .run_inside("ip", &["-j", "addr", "show", "dev", &tap])
        .expect("the tap exists in coinopd's namespace");
    assert!(addr.contains("\"10.213.0.1\""), "{addr}");
    let rules = daemon
        .run_inside("nft", &["list", "table", "ip", "coinop"])
        .expect("rules");
    assert!(
        rules.contains(&format!("22000 comment \"lease {id}\" : 10.213.0.2")),
        "{rules}"
    );

    let (_, args) = holder_of(&tap, daemon.child.id()).expect("some process holds the tap");
    assert!(
        args.starts_with("/coinop-vmm "),
        "the jailed VMM holds it: {args}"
    );
    assert!(args.contains("--net fd=5,mac=02:c0:1e:00:00:00"), "{args}");
    // The guest's address and key go on its kernel command line, which reaches the VMM on
    // an fd: none of it in the arguments every local user can read.
    assert!(args.contains("--cmdline-fd"), "{args}");
    assert!(
        !args.contains("coinop.ip=")
            && !args.contains("coinop.ssh_key=")
            && !args.contains("tenant@test"),
        "{args}"
    );
    // The guest got them (mode=cmdline prints what it was given); the key without its
    // comment.
    let given = console_line(&client, &id, &token, "cmdline: ").await;
    for word in [
        "mode=cmdline",
        "coinop.ip=10.213.0.2/30 coinop.gw=10.213.0.1",
        "coinop.ssh_key=ssh-ed25519:AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly",
    ] {
        assert!(given.contains(word), "{word} not in: {given}");
    }
    assert!(
        !given.contains("tenant@test"),
        "the key's comment stays out: {given}"
    );

    let shown = show(&client, &id, &token).await;
    assert_eq!(shown["network"], *net, "{shown}");

    let stopped = stop(&client, &id, &token).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    wait_until("the tap to go", || {
        daemon
            .run_inside("ip", &["link", "show", "dev", &tap])
            .is_none()
    });
    wait_until("the rules to go", || {
        daemon
            .run_inside("nft", &["list", "table", "ip", "coinop"])
            .is_some_and(|r| r.contains("ssh_forward") && !r.contains(&format!("lease {id}")))
    });
    // The record goes after the tap: coinopd removes it once its `ip link del` has
    // exited, which is after the kernel dropped the link the loop above watched.
    let record = state.join("run").join(format!("{id}.net.json"));
    wait_until("the network record to go", || !record.exists());
    let after = show(&client, &id, &token).await;
    assert_eq!(after["network"], Value::Null, "{after}");
}

/// The network is routed beside the VMM's start; when that fails (here: the lease's port
/// is already forwarded elsewhere, so nft refuses its element) the boot fails as any boot
/// does (503, the lease stopped `boot_failed` with its balance kept for the tenant) and
/// nothing of its network is left: tap, elements, record. The same create retried (its
/// recovery key) gets that stopped lease back, not a second boot under its id, even once
/// the port is free. Its slot serves the next lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_network_cannot_be_routed_fails_its_boot_and_leaves_nothing() {
    let Some((vmm, guest)) = root_kvm_or_skip() else {
        return;
    };
    let dir = common::StateDir::new();
    let state: PathBuf = dir.path().to_path_buf();
    let (daemon, client) = NetnsDaemon::spawn(&state, &vmm, &guest, &["--guest-network", "always"]);
    let conflict = ["ip", "coinop", "ssh_forward", "{ 22000 : 192.0.2.9 }"];
    let mut add = vec!["add", "element"];
    add.extend(conflict);
    daemon
        .run_inside("nft", &add)
        .expect("the first slot's port forwarded elsewhere");

    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "ssh_key": SSH_KEY,
                      "payment": pay(&client).await, "recovery_key": "7e".repeat(32)});
    let failed = call(&client, "POST", "/v1/leases", None, body.clone()).await;
    assert_eq!(
        failed["http_status"],
        503,
        "{failed}\n{}",
        daemon.log(&state)
    );
    assert_eq!(failed["error"]["code"], "boot_failed", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("guest network")),
        "{failed}"
    );
    assert_eq!(failed["stop_reason"], "boot_failed", "{failed}");
    assert!(
        failed["refund"]["refund_msat"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "the balance is kept for the tenant: {failed}"
    );
    let id = failed["lease_id"].as_str().expect("id").to_string();
    let token = failed["token"].as_str().expect("token").to_string();
    let shown = show(&client, &id, &token).await;
    assert_eq!(shown["state"], "stopped", "{shown}");
    assert_eq!(shown["stop_reason"], "boot_failed", "{shown}");
    wait_until("the tap to go", || {
        daemon
            .run_inside("ip", &["link", "show", "dev", "cop0"])
            .is_none()
    });
    let rules = daemon
        .run_inside("nft", &["list", "table", "ip", "coinop"])
        .expect("rules");
    assert!(!rules.contains(&format!("lease {id}")), "{rules}");
    assert!(!state.join("run").join(format!("{id}.net.json")).exists());

    let mut delete = vec!["delete", "element"];
    delete.extend(conflict);
    daemon.run_inside("nft", &delete).expect("conflict removed");
    let retried = call(&client, "POST", "/v1/leases", None, body).await;
    assert_eq!(retried["recovered"], true, "{retried}");
    assert_eq!(retried["lease_id"], id.as_str(), "{retried}");
    assert_eq!(retried["state"], "stopped", "{retried}");
    assert_eq!(retried["stop_reason"], "boot_failed", "{retried}");
    assert!(
        daemon
            .run_inside("ip", &["link", "show", "dev", "cop0"])
            .is_none(),
        "no second boot took a tap"
    );
    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "ssh_key": SSH_KEY,
                      "payment": pay(&client).await});
    let created = daemon.create_lease(&client, &state, body).await;
    assert_eq!(created["network"]["ssh"]["port"], 22000, "{created}");
    let rules = daemon
        .run_inside("nft", &["list", "table", "ip", "coinop"])
        .expect("rules");
    let next = created["lease_id"].as_str().expect("id");
    assert!(
        rules.contains(&format!("22000 comment \"lease {next}\" : 10.213.0.2")),
        "{rules}"
    );
}

/// The per-mount options of `point` as process `pid` sees it (its own mount namespace).
fn mount_options(pid: i32, point: &str) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // Fields: id, parent, major:minor, root, mount point, options, ... (the last wins).
    info.lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&point)).then(|| fields.get(5).copied().unwrap_or_default())
        })
        .map(|o| o.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| panic!("{point} is not a mount of {pid}:\n{info}"))
}

/// Slots of the pool with a parked process, by lease id (their marker says `parked PID`).
fn parked_slots(state: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state.join("pool")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|text| text.starts_with("parked ")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The rootfs lease takes a slot built ahead: its root disk and tap reach the parked child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rootfs_image_boots_from_its_overlay_in_a_pooled_slot_and_gets_a_network() {
    a_rootfs_image_boots_from_its_overlay_in_the_jail_and_gets_a_network(true).await;
}

/// Without a pool, the same lease's jail is built on the request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rootfs_image_boots_from_its_overlay_in_a_jail_built_on_the_request_path() {
    a_rootfs_image_boots_from_its_overlay_in_the_jail_and_gets_a_network(false).await;
}

async fn a_rootfs_image_boots_from_its_overlay_in_the_jail_and_gets_a_network(pooled: bool) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some((vmm, guest)) = root_kvm_or_skip() else {
        return;
    };
    // Reaps any VMM of this state dir that outlived the test, after the daemon guard.
    let dir = common::StateDir::new();
    let state: PathBuf = dir.path().to_path_buf();
    let base = state.join("root.img");
    std::fs::write(&base, vec![7u8; 1 << 20]).expect("base image");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let image = format!(
        "srv={},rootfs={},cmdline=mode=echo",
        guest.display(),
        base.display()
    );
    // auto (the default): the rootfs image gets a network, the test guest would not.
    let pool = if pooled { "2" } else { "0" };
    let (daemon, client) = NetnsDaemon::spawn(
        &state,
        &vmm,
        &guest,
        &["--image", &image, "--jail-pool", pool],
    );

    let body =
        json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "payment": pay(&client).await});
    let plain = daemon.create_lease(&client, &state, body).await;
    assert_eq!(
        plain.get("network"),
        Some(&Value::Null),
        "no rootfs, no NIC: {plain}"
    );
    let plain_id = plain["lease_id"].as_str().expect("id");
    if pooled {
        wait_until("a parked slot for the next lease", || {
            parked_slots(&state).iter().any(|slot| slot != plain_id)
        });
    }

    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "srv", "payment": pay(&client).await});
    let created = daemon.create_lease(&client, &state, body).await;
    let id = created["lease_id"].as_str().expect("id").to_string();
    let token = created["token"].as_str().expect("token").to_string();
    let tap = created["network"]["tap"]
        .as_str()
        .expect("a NIC")
        .to_string();
    let (pid, args) = holder_of(&tap, daemon.child.id()).expect("some process holds the tap");
    assert!(args.contains("--disk path=/rootfs,cow=/overlay"), "{args}");
    // The 1-vCPU lease's disk and network rates, coinopd's defaults (device_limits.rs).
    let value_of = |flag: &str| {
        let words: Vec<&str> = args.split(' ').collect();
        let at = words.iter().position(|w| *w == flag);
        at.and_then(|i| words.get(i + 1)).map(|v| v.to_string())
    };
    let disk = value_of("--disk").expect("a --disk");
    assert!(
        disk.ends_with(&format!(",bw={},iops=1000", 64u64 << 20)),
        "{args}"
    );
    let net = value_of("--net").expect("a --net");
    assert!(net.ends_with(",bw=12500000"), "{args}");
    assert_eq!(
        state.join("pool").join(&id).exists(),
        pooled,
        "the lease took a slot built ahead iff the pool is on\n{}",
        daemon.log(&state)
    );

    let overlay = state.join("overlays").join(format!("{id}.overlay"));
    let meta = std::fs::metadata(&overlay).expect("the lease's overlay");
    let vmm_uid = std::fs::metadata(format!("/proc/{pid}"))
        .expect("the VMM's /proc")
        .uid();
    assert_eq!(meta.uid(), vmm_uid, "owned by the jail's uid");
    assert_ne!(vmm_uid, 0, "the VMM runs unprivileged");
    assert!(
        meta.len() > 1 << 20,
        "the VMM opened it through the writable bind and sized it (base + bitmap + footer): {}",
        meta.len()
    );
    assert_eq!(std::fs::read(&base).expect("base"), vec![7u8; 1 << 20]);
    assert_eq!(
        mount_options(pid, "/rootfs").first().map(String::as_str),
        Some("ro")
    );
    assert_eq!(
        mount_options(pid, "/overlay").first().map(String::as_str),
        Some("rw")
    );
    assert!(mount_options(pid, "/overlay").iter().any(|o| o == "nosuid"));

    let stopped = stop(&client, &id, &token).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    wait_until("the overlay to go", || !overlay.exists());
    wait_until("the tap to go", || {
        daemon
            .run_inside("ip", &["link", "show", "dev", &tap])
            .is_none()
    });
    let plain_token = plain["token"].as_str().expect("token");
    let _ = stop(&client, plain_id, plain_token).await;
}

/// Lease `id`'s console so far, through the tenant's route.
async fn console(c: &Client, id: &str, token: &str) -> String {
    let r = c
        .call(
            "GET",
            &format!("/v1/leases/{id}/console"),
            Some(token),
            None,
        )
        .await
        .expect("coinopd answers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The first whole line of lease `id`'s console that starts with `prefix` (waited for).
async fn console_line(c: &Client, id: &str, token: &str, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A whole line: the guest may still be printing it.
        let text = console(c, id, token).await;
        let line = text
            .split_inclusive('\n')
            .find(|l| l.starts_with(prefix) && l.ends_with('\n'));
        if let Some(line) = line {
            return line.trim_end().to_string();
        }
        assert!(Instant::now() < deadline, "no {prefix:?} line: {text}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The lines the test guest printed as `personalised: LINE` on lease `id`'s console.
async fn personalised_lines(c: &Client, id: &str, token: &str) -> Vec<String> {
    common::personalisation_line::personalised(&console(c, id, token).await)
}

/// An `agent` image's leases with a NIC restore from a golden snapshot built with a NIC of
/// its own: each restored VMM holds the lease's own tap under the lease's MAC, its command
/// line carries no address, and the guest's personalisation line does. So does a lease
/// that takes a VMM restored ahead of its create (a warm restore, routed before the lease
/// existed). A corrupt snapshot gives a cold boot with a NIC again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_images_leases_with_a_nic_restore_each_with_its_own() {
    let Some((vmm, guest)) = root_kvm_or_skip() else {
        return;
    };
    let dir = common::StateDir::new();
    let state: PathBuf = dir.path().to_path_buf();
    let image = format!(
        "tga={},snapshot,agent,cmdline=mode=personalise",
        guest.display()
    );
    let (daemon, client) = NetnsDaemon::spawn(
        &state,
        &vmm,
        &guest,
        &["--guest-network", "always", "--image", &image],
    );
    let create = async || daemon.paid_lease(&client, &state, "tga").await;
    let first = create().await;
    assert_eq!(first["boot"]["start"], "cold", "{first}");
    let snapshots = state.join("snapshots").join("tga");
    wait_until("the golden snapshot (with a NIC)", || {
        std::fs::read_dir(&snapshots).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("1c64mn-")
                    && e.path().join("state").is_file()
            })
        })
    });
    let mut leases = vec![first];
    leases.push(create().await);
    // The restore makes coinopd keep one of the shape restored ahead; the next create takes
    // it (its id is the warm VMM's).
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(&state);
    let warm = create().await;
    assert_eq!(warm["lease_id"], json!(warm_id), "{warm}");
    leases.push(warm);
    let mut macs = Vec::new();
    for lease in &leases {
        let net = &lease["network"];
        let (id, token) = (
            lease["lease_id"].as_str().expect("id"),
            lease["token"].as_str().expect("token"),
        );
        let (ip, gw, mac) = (
            net["guest_ip"].as_str().expect("guest_ip"),
            net["host_ip"].as_str().expect("host_ip"),
            net["mac"].as_str().expect("mac"),
        );
        let lines = personalised_lines(&client, id, token).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        for word in [
            format!("hostname={id}"),
            format!("ip={ip}/30"),
            format!("gw={gw}"),
            format!("mac={mac}"),
        ] {
            assert!(line.split(' ').any(|w| w == word), "{word} in {line}");
        }
        // The guest's SSH host key: the line's host_key (seed, then public key) is the key
        // the reply and the lease view name (an OpenSSH line of the public half).
        let public = line
            .split(' ')
            .find_map(|w| w.strip_prefix("host_key="))
            .and_then(|hex| hex::decode(hex).ok())
            .filter(|bytes| bytes.len() == 64)
            .unwrap_or_else(|| panic!("a 64-byte host_key in {line}"))[32..]
            .to_vec();
        let mut blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20".to_vec();
        blob.extend_from_slice(&public);
        let told = format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        assert_eq!(net["ssh"]["host_key"], json!(told), "{lease}");
        let view = show(&client, id, token).await;
        assert_eq!(view["network"]["ssh"]["host_key"], json!(told), "{view}");
        let tap = net["tap"].as_str().expect("tap");
        let (_, args) = holder_of(tap, daemon.child.id()).expect("a VMM holds the lease's tap");
        assert!(args.contains(&format!("--net fd=5,mac={mac}")), "{args}");
        assert!(
            !args.contains("coinop.ip="),
            "no address on a command line: {args}"
        );
        macs.push(mac.to_string());
    }
    assert_eq!(leases[1]["boot"]["start"], "restore", "{}", leases[1]);
    assert_eq!(leases[2]["boot"]["start"], "warm", "{}", leases[2]);
    for restored in &leases[1..] {
        let tap = restored["network"]["tap"].as_str().expect("tap");
        let (pid, args) = holder_of(tap, daemon.child.id()).expect("holder");
        assert!(args.contains("--restore"), "{args}");
        if restored["boot"]["start"] == "warm" {
            assert_eq!(pid, warm_pid, "the warm VMM holds the lease's tap");
        }
    }
    assert!(
        common::warm_restore::waiting(&state)
            .iter()
            .all(|(id, _)| *id != warm_id),
        "the taken warm restore is the lease's, no marker of it left"
    );
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), 3, "every lease its own MAC: {macs:?}");
    let mut host_keys: Vec<&str> = leases
        .iter()
        .filter_map(|l| l["network"]["ssh"]["host_key"].as_str())
        .collect();
    host_keys.sort_unstable();
    host_keys.dedup();
    assert_eq!(
        host_keys.len(),
        3,
        "every lease its own host key: {host_keys:?}"
    );

    // A corrupt snapshot: the lease boots cold instead, with a NIC of its own again (the
    // failed restore released the first) and its address in its line.
    let snapshot = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("state").is_file())
        .expect("the golden snapshot");
    use std::os::unix::fs::PermissionsExt;
    let state_file = snapshot.join("state");
    std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&state_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = std::fs::read(&state_file).expect("read state");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&state_file, &bytes).expect("corrupt state");
    let mut fallback = create().await;
    if fallback["boot"]["start"] == "warm" {
        // The pool's refill restored one before the corruption: that VMM is whole. The
        // next refill fails on the corrupt snapshot, so the create after it does not.
        leases.push(fallback);
        fallback = create().await;
    }
    assert_eq!(fallback["boot"]["start"], "cold", "{fallback}");
    let net = &fallback["network"];
    let (id, token) = (
        fallback["lease_id"].as_str().expect("id"),
        fallback["token"].as_str().expect("token"),
    );
    let lines = personalised_lines(&client, id, token).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let ip = format!("ip={}/30", net["guest_ip"].as_str().expect("guest_ip"));
    assert!(lines[0].split(' ').any(|w| w == ip), "{ip} in {}", lines[0]);
    let tap = net["tap"].as_str().expect("tap");
    let (_, args) = holder_of(tap, daemon.child.id()).expect("the cold VMM holds the tap");
    assert!(!args.contains("--restore"), "{args}");
    leases.push(fallback);
    for lease in &leases {
        let (id, token) = (
            lease["lease_id"].as_str().expect("id"),
            lease["token"].as_str().expect("token"),
        );
        let stopped = stop(&client, id, token).await;
        assert_eq!(stopped["state"], "stopped", "{stopped}");
    }
}

/// A second coinopd with guest networking in a namespace where one runs (another state dir
/// on the same host) refuses to start, exit 2, naming the first: its start would sweep the
/// first one's taps and render the rule table from its own leases alone. The first one's
/// lease keeps its tap and rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coinopd_does_not_take_over_a_namespaces_guest_networks() {
    let Some((vmm, guest)) = root_kvm_or_skip() else {
        return;
    };
    let dir = common::StateDir::new();
    let state: PathBuf = dir.path().to_path_buf();
    let (daemon, client) = NetnsDaemon::spawn(&state, &vmm, &guest, &["--guest-network", "always"]);
    let created = daemon.paid_lease(&client, &state, "testguest").await;
    let id = created["lease_id"].as_str().expect("id").to_string();
    let tap = created["network"]["tap"].as_str().expect("tap").to_string();

    let second = common::StateDir::new();
    let second_log = second.path().join("second.log");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", daemon.child.id()))
        .arg(env!("CARGO_BIN_EXE_coinopd"))
        .args(
            common::daemon_args(
                second.path(),
                &second.path().join("coinop.sock"),
                &["--guest-network", "always"],
            )
            .iter()
            .skip(1),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&second_log).expect("log"))
        .spawn()
        .expect("run a second coinopd");
    // It must end by itself; one that runs on (sweeping the first one's networks) is
    // killed, and fails the test below.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "guest networking in this network namespace is managed by coinopd pid {}",
            daemon.child.id()
        )),
        "{stderr}"
    );
    assert!(
        daemon
            .run_inside("ip", &["link", "show", "dev", &tap])
            .is_some(),
        "the first one's tap is still there"
    );
    let rules = daemon
        .run_inside("nft", &["list", "table", "ip", "coinop"])
        .expect("rules");
    assert!(rules.contains(&format!("lease {id}")), "{rules}");
}
