//! Guest networking: per lease, a tap (created here and handed to the jailed VMM as an fd),
//! a routed /30 from the operator's pool with the host side on the tap, a permanent
//! neighbour entry for the guest's MAC, IP forwarding, masquerade for the guest's egress
//! and a forwarded host port (DNAT) to the guest's SSH port 22. The tenant is told
//! `{guest_ip, host_ip, prefix_len, mac, ssh: {host, port}}`.
//!
//! Setup comes in two parts: [`GuestNetwork::reserve`] takes the slot and makes the tap,
//! all the VMM needs to start; [`GuestNetwork::route`] adds the host's side (address, link
//! up, neighbour) and the lease's elements in the rule table, and may run while the VMM
//! starts. Teardown: the tap is non-persistent, so it disappears with the VMM holding it;
//! the lease's elements are deleted from the rule table ([`nft_ruleset`]); then every
//! connection conntrack tracks for the guest's address is deleted
//! ([`host_commands::forget_connections`]), before the slot is free for another lease.
//! Left alone they would go on holding their share of the host's conntrack table (a
//! completed masqueraded TCP connection for five days), and the next lease given the slot
//! would inherit them: a UDP flow an outside server keeps alive would go on reaching the
//! address, now another tenant's. Each lease's record (`NAME.net.json` in the run dir)
//! lets a restarted coinopd re-adopt a running guest's slot; [`GuestNetwork::sweep`], run
//! after re-adoption, removes whatever a crashed coinopd left: rules and taps of leases
//! that are not live, their records, and the tracked connections of the addresses those
//! records name.
//!
//! The taps' names and the table's are fixed, so one coinopd per network namespace may
//! manage them: the daemon holds a [`netns_claim::NetnsClaim`] while a `GuestNetwork` runs.
//!
//! When it is on (`--guest-network`): `always`, or `auto` (the default) for images with a
//! root filesystem, the only guests that use a NIC; `never` turns it off. It needs root,
//! `ip` (iproute2) and `nft` (nftables), and should have `conntrack` (conntrack-tools):
//! without it coinopd says so at start and a stopped guest's connections stay tracked
//! until they time out.

pub mod address_pool;
pub mod host_commands;
pub mod netns_claim;
pub mod nft_ruleset;
pub mod tap_device;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use address_pool::{AddressPool, Cidr, LEASE_PREFIX_LEN, TAP_PREFIX};
use host_commands::CommandError;
use nft_ruleset::LeaseRules;

/// Suffix of a lease's file of sent SSH host keys, beside its `.net.json` record.
const SENT_HOST_KEYS: &str = ".host-keys";

/// `--guest-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Every lease gets a NIC.
    Always,
    /// Leases of images with a root filesystem get a NIC.
    Auto,
    /// No lease does.
    Never,
}

impl NetworkMode {
    pub fn parse(text: &str) -> Option<NetworkMode> {
        match text {
            "always" | "on" => Some(NetworkMode::Always),
            "auto" => Some(NetworkMode::Auto),
            "never" | "off" => Some(NetworkMode::Never),
            _ => None,
        }
    }
}

/// Daemon-wide network settings.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub pool: Cidr,
    pub ssh_ports: (u16, u16),
    /// What tenants are told to connect to for SSH (`ssh.host`).
    pub ssh_host: String,
    /// Where per-lease records live (the run dir).
    pub record_dir: PathBuf,
    /// How many connections one guest may have tracked at once: a new one past that is
    /// dropped until one of them ends ([`nft_ruleset`]). Usually
    /// [`DEFAULT_FLOWS_PER_GUEST`].
    pub flows_per_guest: u32,
}

/// The usual [`NetworkSettings::flows_per_guest`] (coinopd's `--guest-max-flows`): far more than a guest serving or
/// browsing keeps open, and a small share of the host's conntrack table
/// (`net.netfilter.nf_conntrack_max`, 262144 by default on a 64-bit host with 4 GiB of
/// memory or more), so one guest cannot fill it. 64 guests at their cap together would: an
/// operator running more leases with networking than that raises `nf_conntrack_max` to
/// leases x 4096 plus what the host itself needs.
pub const DEFAULT_FLOWS_PER_GUEST: u32 = 4096;

/// Errors of guest networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("guest network: every slot of the pool is in use ({0} leases with networking)")]
    Full(u32),
    #[error("guest network: creating tap {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
    #[error("guest network: {0}")]
    Command(#[from] CommandError),
    #[error("guest network: enabling IPv4 forwarding: {0}")]
    Forwarding(std::io::Error),
}

/// The tenant's view of a lease's network (also the lease's record on disk).
pub use coinop_proto::network::{NetInfo, SshEndpoint};

/// The kernel command-line words the guest's init reads (images/rootfs/init).
pub fn cmdline_words(info: &NetInfo) -> String {
    format!(
        "coinop.ip={}/{} coinop.gw={}",
        info.guest_ip, info.prefix_len, info.host_ip
    )
}

/// One lease's network as coinopd holds it.
struct Entry {
    info: NetInfo,
    /// Which attach made it: a [`PendingRoute`] of an earlier attach of the same lease
    /// (detached since) must not route this one's.
    serial: u64,
}

struct State {
    pool: AddressPool,
    leases: BTreeMap<String, Entry>,
    next_serial: u64,
    /// Whether this coinopd rendered the table (its sets exist): until then a lease's
    /// elements cannot be added alone.
    table_rendered: bool,
}

/// The host side of every lease's network.
pub struct GuestNetwork {
    settings: NetworkSettings,
    /// Whether `conntrack` ran at start (without it, teardown leaves tracked connections).
    conntrack: bool,
    state: Mutex<State>,
    /// Held while `ip`/`nft`/`conntrack` change the host: a lease's routing, its teardown
    /// and the sweep never interleave, and no command runs under `state`, so taking a slot
    /// never waits for one.
    commands: Mutex<()>,
}

/// What an attach left to do once the tap exists: the host side of the lease's route and
/// its forwarding, masquerade and anti-spoofing elements ([`GuestNetwork::route`]).
#[derive(Debug)]
#[must_use = "the lease is not reachable until it is routed"]
pub struct PendingRoute {
    lease_id: String,
    serial: u64,
}

impl std::fmt::Debug for GuestNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestNetwork")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl GuestNetwork {
    /// Turns on IPv4 forwarding and makes sure the rule table exists, which proves `nft`
    /// works here, without touching the rules of guests that outlived an earlier coinopd
    /// (their records are read back by [`GuestNetwork::readopt`], the rest goes in
    /// [`GuestNetwork::sweep`]).
    pub fn start(settings: NetworkSettings) -> Result<GuestNetwork, NetError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetError::Forwarding)?;
        let conntrack = host_commands::conntrack_available();
        if !conntrack {
            tracing::warn!(
                "conntrack (conntrack-tools) not found: a stopped guest's tracked connections \
                 stay until they time out, counting against the host's conntrack table and \
                 reaching the next lease given its address"
            );
        }
        let net = GuestNetwork {
            conntrack,
            state: Mutex::new(State {
                pool: AddressPool::new(settings.pool, settings.ssh_ports),
                leases: BTreeMap::new(),
                next_serial: 0,
                table_rendered: false,
            }),
            commands: Mutex::new(()),
            settings,
        };
        host_commands::nft_apply(&format!("add table {}\n", nft_ruleset::TABLE))?;
        let (first, last) = net.settings.ssh_ports;
        if let Err(e) =
            host_commands::nft_apply(&nft_ruleset::render_ipv6_guard(net.settings.ssh_ports))
        {
            // A host without IPv6 has nothing to guard; one with it should know.
            tracing::warn!(
                error = %e,
                "cannot refuse IPv6 connections to the forwarded SSH ports {first}-{last}: if \
                 tenants' SSH host name has an IPv6 address, a local user listening on one of \
                 these ports there would answer its tenant's connection"
            );
        }
        Ok(net)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commands(&self) -> MutexGuard<'_, ()> {
        self.commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, lease_id: &str) -> PathBuf {
        self.settings
            .record_dir
            .join(format!("{lease_id}.net.json"))
    }

    /// The SSH host keys coinopd sent `lease_id`'s guest, one `CRC32HEX KEY` line each.
    fn sent_host_keys(&self, lease_id: &str) -> PathBuf {
        self.settings
            .record_dir
            .join(format!("{lease_id}{SENT_HOST_KEYS}"))
    }

    /// How many leases can have networking at once.
    pub fn capacity(&self) -> u32 {
        self.state().pool.capacity()
    }

    /// Sets up `lease_id`'s network whole ([`GuestNetwork::reserve`] then
    /// [`GuestNetwork::route`]) and returns the tap's fd (for `--net fd=N`) and what the
    /// tenant is told. On failure nothing of it is left.
    pub fn attach(&self, lease_id: &str) -> Result<(OwnedFd, NetInfo), NetError> {
        let (fd, info, pending) = self.reserve(lease_id)?;
        if let Err(e) = self.route(pending) {
            self.detach(lease_id);
            return Err(e);
        }
        Ok((fd, info))
    }

    /// The part of `lease_id`'s network its VMM needs to start: a slot (addresses, MAC,
    /// forwarded port) and its tap, created down. No command runs: the host's side of the
    /// route and the rules follow in [`GuestNetwork::route`], which may run while the VMM
    /// starts (a tap that is down drops whatever the guest sends, so nothing passes before
    /// its rules are in). On failure nothing of it is left; later, [`GuestNetwork::detach`]
    /// removes it whether or not it was routed.
    pub fn reserve(&self, lease_id: &str) -> Result<(OwnedFd, NetInfo, PendingRoute), NetError> {
        let mut state = self.state();
        let slot = state
            .pool
            .take()
            .ok_or(NetError::Full(state.pool.capacity()))?;
        let info = NetInfo {
            guest_ip: state.pool.guest_ip(slot),
            host_ip: state.pool.host_ip(slot),
            prefix_len: LEASE_PREFIX_LEN,
            mac: address_pool::mac(slot),
            ssh: SshEndpoint {
                host: self.settings.ssh_host.clone(),
                port: state.pool.ssh_port(slot),
                // Set by coinopd when it makes the guest's host key (set_host_key).
                host_key: None,
            },
            tap: address_pool::tap_name(slot),
            slot,
        };
        let fd = match tap_device::create(&info.tap) {
            Ok(fd) => fd,
            Err(source) => {
                state.pool.free(slot);
                return Err(NetError::Tap {
                    tap: info.tap.clone(),
                    source,
                });
            }
        };
        let serial = state.next_serial;
        state.next_serial += 1;
        let entry = Entry {
            info: info.clone(),
            serial,
        };
        state.leases.insert(lease_id.to_string(), entry);
        drop(state);
        // Before the VMM exists, so a restarted coinopd re-adopting it finds its slot.
        write_record(&self.record(lease_id), &info);
        let pending = PendingRoute {
            lease_id: lease_id.to_string(),
            serial,
        };
        Ok((fd, info, pending))
    }

    /// The rest of a reserved network: the lease's elements in the rule table (one `nft -f`
    /// transaction), then the tap's address, its link up and the guest's neighbour entry
    /// (one `ip -batch`). Nothing to do, and `Ok`, if the lease was detached meanwhile (its
    /// boot failed). On failure the caller fails the boot, whose release detaches it.
    pub fn route(&self, pending: PendingRoute) -> Result<(), NetError> {
        let _commands = self.commands();
        let (info, rendered) = {
            let state = self.state();
            match state.leases.get(&pending.lease_id) {
                Some(e) if e.serial == pending.serial => (e.info.clone(), state.table_rendered),
                _ => return Ok(()),
            }
        };
        if rendered {
            host_commands::nft_apply(&nft_ruleset::add(&lease_rules(&pending.lease_id, &info)))?;
        } else {
            self.render_table()?;
        }
        host_commands::run("ip", &["-batch", "-"], Some(&host_side(&info)))?;
        Ok(())
    }

    /// Replaces the whole table by the live leases' (the `commands` lock held).
    fn render_table(&self) -> Result<(), NetError> {
        let script = render(&self.state(), self.settings.flows_per_guest);
        host_commands::nft_apply(&script)?;
        self.state().table_rendered = true;
        Ok(())
    }

    /// Tears down `lease_id`'s network (idempotent): its elements removed from the rules,
    /// its tap deleted if its VMM has not taken it along, its slot and record freed.
    pub fn detach(&self, lease_id: &str) {
        let _commands = self.commands();
        // Out of the map first, so a route still pending finds nothing to do; the slot
        // stays taken until its tap and rules are gone.
        let (entry, rendered) = {
            let mut state = self.state();
            let rendered = state.table_rendered;
            match state.leases.remove(lease_id) {
                Some(entry) => (entry, rendered),
                None => return,
            }
        };
        let info = entry.info;
        if rendered {
            let script = nft_ruleset::delete(&lease_rules(lease_id, &info));
            if let Err(e) = host_commands::nft_apply(&script) {
                tracing::warn!(lease = lease_id, error = %e, "removing the lease's network rules");
            }
        }
        let _ = host_commands::ip(&["link", "del", &info.tap]);
        // After its elements and tap are gone, so the guest can start no new connection and
        // its forwarded port leads to it no more; before the slot is free, so no later
        // lease inherits what is left.
        self.forget_connections(lease_id, info.guest_ip);
        let _ = std::fs::remove_file(self.record(lease_id));
        let _ = std::fs::remove_file(self.sent_host_keys(lease_id));
        self.state().pool.free(info.slot);
    }

    /// Deletes the tracked connections of `guest_ip`, `lease_id`'s guest (gone). A failure
    /// is said and otherwise ignored: a lease's stop goes on.
    fn forget_connections(&self, lease_id: &str, guest_ip: Ipv4Addr) {
        if !self.conntrack {
            return;
        }
        match host_commands::forget_connections(guest_ip) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(lease = lease_id, %guest_ip, n, "deleted tracked connections"),
            Err(e) => tracing::warn!(lease = lease_id, %guest_ip, error = %e,
                "deleting the guest's tracked connections; they stay until they time out"),
        }
    }

    /// Claims back the slot of a guest that outlived an earlier coinopd, from its record.
    pub fn readopt(&self, lease_id: &str) {
        let Some(info) = std::fs::read(self.record(lease_id))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<NetInfo>(&bytes).ok())
        else {
            return;
        };
        let mut state = self.state();
        if state.pool.claim(info.slot) {
            let serial = state.next_serial;
            state.next_serial += 1;
            state
                .leases
                .insert(lease_id.to_string(), Entry { info, serial });
        } else {
            tracing::warn!(
                lease = lease_id,
                slot = info.slot,
                "network slot not reclaimable"
            );
        }
    }

    /// Removes what no live lease owns: rules (by rendering the table anew), `cop*` taps,
    /// records. The live leases' host side is applied again: an earlier coinopd may have
    /// died between a lease's tap and its route.
    pub fn sweep(&self) -> Result<(), NetError> {
        let _commands = self.commands();
        self.render_table()?;
        let state = self.state();
        let live: Vec<&str> = state.leases.values().map(|e| e.info.tap.as_str()).collect();
        let again: String = state.leases.values().map(|e| host_side(&e.info)).collect();
        if !again.is_empty() {
            // -force: one tap's failure does not keep the others' lines from running.
            if let Err(e) = host_commands::run("ip", &["-force", "-batch", "-"], Some(&again)) {
                tracing::warn!(error = %e, "restoring the live guests' routes");
            }
        }
        for tap in host_commands::links_named(TAP_PREFIX)? {
            if !live.contains(&tap.as_str()) {
                tracing::info!(tap, "removing a left-over guest tap");
                let _ = host_commands::ip(&["link", "del", &tap]);
            }
        }
        let dead = sweep_records(&self.settings.record_dir, &state.leases);
        let live_guests: Vec<Ipv4Addr> = state.leases.values().map(|e| e.info.guest_ip).collect();
        drop(state);
        // Their rules and taps are gone. A live lease with the same address (two records
        // named one slot, the one re-adopted kept it) keeps its connections.
        for (lease_id, guest_ip) in dead {
            if !live_guests.contains(&guest_ip) {
                self.forget_connections(&lease_id, guest_ip);
            }
        }
        Ok(())
    }

    /// What `lease_id`'s tenant is told, while its network is up.
    pub fn info(&self, lease_id: &str) -> Option<NetInfo> {
        self.state().leases.get(lease_id).map(|e| e.info.clone())
    }

    /// Records the SSH host key (an OpenSSH public key line) coinopd is about to give
    /// `lease_id`'s guest in the line whose CRC-32 is `line_crc32`: in what its tenant is
    /// told, in its record (so a restarted coinopd still shows it), and among the lease's
    /// sent host keys (see [`GuestNetwork::confirm_host_key`]). Called before the line is
    /// sent, so whichever line the guest ends up with, its key is on file. Nothing when the
    /// lease has no network.
    pub fn set_host_key(&self, lease_id: &str, host_key: &str, line_crc32: u32) {
        let mut state = self.state();
        let Some(entry) = state.leases.get_mut(lease_id) else {
            return;
        };
        entry.info.ssh.host_key = Some(host_key.to_string());
        // Appended whole in one write(2); a process crash (the failure this is for: a
        // power loss takes the guest with it) cannot leave half a line behind.
        let sent = format!("{line_crc32:08x} {host_key}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.sent_host_keys(lease_id))
            .and_then(|mut f| std::io::Write::write_all(&mut f, sent.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(lease = lease_id, error = %e,
                "recording a sent SSH host key; a restart may show the guest's key wrongly");
        }
        write_record(&self.record(lease_id), &entry.info);
    }

    /// After a restart: the guest's VMM says it holds the line whose CRC-32 is
    /// `line_crc32`; the lease's host key becomes the one that line carried, if it is among
    /// those recorded by [`GuestNetwork::set_host_key`]. A coinopd that died between
    /// sending a line and recording it as sent cannot happen (the record comes first); one
    /// that died after recording a second line's key but before (or without) sending it
    /// leaves the record naming a key the guest does not have: this puts it right. Whether
    /// the held line was found.
    pub fn confirm_host_key(&self, lease_id: &str, line_crc32: u32) -> bool {
        let sent = std::fs::read_to_string(self.sent_host_keys(lease_id)).unwrap_or_default();
        let tag = format!("{line_crc32:08x}");
        let Some(host_key) = sent
            .lines()
            .filter_map(|l| l.split_once(' '))
            .rfind(|(t, _)| *t == tag)
            .map(|(_, key)| key)
        else {
            return false;
        };
        let mut state = self.state();
        let Some(entry) = state.leases.get_mut(lease_id) else {
            return false;
        };
        if entry.info.ssh.host_key.as_deref() != Some(host_key) {
            entry.info.ssh.host_key = Some(host_key.to_string());
            write_record(&self.record(lease_id), &entry.info);
        }
        true
    }
}

/// Writes a lease's network record whole or not at all (a temporary file renamed over
/// it): a crash mid-write must not leave a record a restarted coinopd cannot read, which
/// would lose the lease's slot and address.
fn write_record(path: &Path, info: &NetInfo) {
    let Ok(json) = serde_json::to_vec(info) else {
        return;
    };
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The `ip -batch` lines of a lease's host side: the tap's address, the tap up, and a
/// permanent neighbour entry for the guest's MAC (known, so no ARP, and a guest cannot
/// claim another address's frames by answering ARP). Each is idempotent (`replace`), so a
/// sweep can apply them again. One batch: each process start costs milliseconds.
fn host_side(info: &NetInfo) -> String {
    format!(
        "addr replace {host}/{len} dev {tap}\nlink set {tap} up\n\
         neigh replace {guest} lladdr {mac} dev {tap} nud permanent\n",
        host = info.host_ip,
        len = info.prefix_len,
        tap = info.tap,
        guest = info.guest_ip,
        mac = info.mac,
    )
}

fn lease_rules(lease_id: &str, info: &NetInfo) -> LeaseRules {
    LeaseRules {
        lease_id: lease_id.to_string(),
        tap: info.tap.clone(),
        guest_ip: info.guest_ip,
        ssh_port: info.ssh.port,
    }
}

fn render(state: &State, flows_per_guest: u32) -> String {
    let rules: Vec<LeaseRules> = state
        .leases
        .iter()
        .map(|(id, e)| lease_rules(id, &e.info))
        .collect();
    nft_ruleset::render(&rules, flows_per_guest)
}

/// Removes the records (and sent host keys, and half-written records) of leases not in
/// `live`; returns each removed record's lease and guest address.
fn sweep_records(dir: &Path, live: &BTreeMap<String, Entry>) -> Vec<(String, Ipv4Addr)> {
    let mut dead = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return dead;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_suffix(".net.json")
            .or_else(|| name.strip_suffix(SENT_HOST_KEYS))
            .or_else(|| name.strip_suffix(".net.json.tmp"));
        if let Some(id) = id {
            if !live.contains_key(id) || name.ends_with(".tmp") {
                if name.ends_with(".net.json") {
                    let info = std::fs::read(entry.path())
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<NetInfo>(&bytes).ok());
                    if let Some(info) = info {
                        dead.push((id.to_string(), info.guest_ip));
                    }
                }
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    dead
}
