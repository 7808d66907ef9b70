//! Guest networking for real, each test in a throwaway network namespace of its own (a
//! thread that unshared CLONE_NEWNET: its sockets, the `ip`/`nft` it runs and the taps it
//! creates live there, and vanish with it). Never touches the host's own namespace or any
//! outside address. Needs root (skipped otherwise, with a SKIPPED line).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coinop_host::guest_network::address_pool::Cidr;
use coinop_host::guest_network::host_commands::{ip, run};
use coinop_host::guest_network::tap_device;
use coinop_host::guest_network::{GuestNetwork, NetInfo, NetworkSettings, DEFAULT_FLOWS_PER_GUEST};

fn skipped(why: &str) -> bool {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    true
}

fn cannot_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skipped("guest networking needs root");
    }
    for tool in ["ip", "nft", "conntrack"] {
        if run(tool, &["-V"], None).is_err() && run(tool, &["--version"], None).is_err() {
            return skipped("ip (iproute2), nft (nftables) and conntrack are needed");
        }
    }
    false
}

/// Runs `f` on a new thread inside a fresh network namespace (with lo up).
fn in_throwaway_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        ip(&["link", "set", "lo", "up"]).expect("lo up");
        f();
    })
    .join()
    .expect("the test thread passes");
}

/// Runs `f` (unless the test cannot run here) inside a fresh network namespace, with a
/// fresh directory for the network's records (removed after `f`).
fn in_netns_with_records(f: impl FnOnce(PathBuf) + Send + 'static) {
    if cannot_run() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let records = dir.path().to_path_buf();
    in_throwaway_netns(move || f(records));
}

fn settings(dir: &Path) -> NetworkSettings {
    NetworkSettings {
        pool: Cidr::parse("10.213.0.0/29").expect("cidr"),
        ssh_ports: (22000, 22009),
        ssh_host: "test-host".into(),
        record_dir: dir.to_path_buf(),
        flows_per_guest: DEFAULT_FLOWS_PER_GUEST,
    }
}

/// The connections conntrack tracks in this namespace that `ip` is an end of, before or
/// after NAT, one `conntrack -L` line each.
fn tracked(ip: Ipv4Addr) -> Vec<String> {
    let listing = run("conntrack", &["-L"], None).expect("conntrack -L");
    let end = format!("={ip} ");
    listing
        .lines()
        .filter(|l| l.contains(&end))
        .map(str::to_string)
        .collect()
}

/// Waits (up to 3 s) until `ip` has at least `n` tracked connections; returns them, after
/// a moment more for any that were still on their way (a tap's packets are processed
/// after the write that sent them returns).
fn tracked_at_least(ip: Ipv4Addr, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while tracked(ip).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    tracked(ip)
}

fn ruleset() -> String {
    run("nft", &["list", "table", "ip", "coinop"], None).expect("nft list")
}

fn link_json(name: &str) -> Option<serde_json::Value> {
    let text = ip(&["-j", "addr", "show", "dev", name]).ok()?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    v.into_iter().next()
}

/// Reads frames from `tap` (10-byte vnet header, then Ethernet) until one is a TCP SYN to
/// `guest`:22 sent to `mac`, or `deadline` passes.
fn saw_syn_on_tap(tap: &OwnedFd, guest: Ipv4Addr, mac: &str, deadline: Instant) -> bool {
    saw_syn_to_port(tap, SocketAddrV4::new(guest, 22), mac, deadline)
}

/// Reads frames from `tap` until one is a TCP SYN to `to` sent to `mac`, or `deadline`
/// passes.
fn saw_syn_to_port(tap: &OwnedFd, to: SocketAddrV4, mac: &str, deadline: Instant) -> bool {
    let guest = *to.ip();
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mac: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(200u16)).expect("poll") == 0 {
            continue;
        }
        let n = nix::unistd::read(tap, &mut buf).expect("read tap");
        let frame = &buf[10.min(n)..n];
        if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip4 = &frame[14..];
        let ihl = usize::from(ip4[0] & 0x0f) * 4;
        let tcp = &ip4[ihl..];
        let is_syn = ip4[9] == 6
            && ip4[16..20] == guest.octets()
            && tcp[2..4] == to.port().to_be_bytes()
            && tcp[13] & 0x02 != 0;
        if is_syn {
            assert_eq!(
                frame[..6],
                mac[..],
                "the SYN is addressed to the guest's MAC"
            );
            return true;
        }
    }
    false
}

/// The MAC address of link `name`.
fn link_mac(name: &str) -> [u8; 6] {
    let text = ip(&["-j", "link", "show", "dev", name]).expect("ip link show");
    let links: Vec<serde_json::Value> = serde_json::from_str(&text).expect("ip -j");
    let address = links
        .first()
        .and_then(|l| l["address"].as_str())
        .unwrap_or_else(|| panic!("{name} has a MAC: {text}"));
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(address.split(':')) {
        *byte = u8::from_str_radix(hex, 16).expect("hex");
    }
    mac
}

/// The Internet checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What [`send_into`] sends: a UDP datagram or a TCP SYN.
#[derive(Clone, Copy)]
enum Segment {
    Udp,
    Syn,
}

/// Writes one IPv4 packet from `src` to `dst` into `tap` (whose host-side link is
/// `link`) as if whoever is at the other end of the tap sent it: the guest, or anything
/// forging packets there. Checksums are right, so conntrack tracks it.
fn send_into(tap: &OwnedFd, link: &str, segment: Segment, src: SocketAddrV4, dst: SocketAddrV4) {
    let (proto, mut l4) = match segment {
        Segment::Udp => {
            let mut udp = Vec::new();
            udp.extend_from_slice(&src.port().to_be_bytes());
            udp.extend_from_slice(&dst.port().to_be_bytes());
            udp.extend_from_slice(&12u16.to_be_bytes());
            udp.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
            udp.extend_from_slice(b"ping");
            (17u8, udp)
        }
        Segment::Syn => {
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&src.port().to_be_bytes());
            tcp.extend_from_slice(&dst.port().to_be_bytes());
            tcp.extend_from_slice(&1u32.to_be_bytes()); // sequence
            tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
            tcp.extend_from_slice(&[5 << 4, 0x02]); // 20-byte header, SYN
            tcp.extend_from_slice(&65535u16.to_be_bytes()); // window
            tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            (6u8, tcp)
        }
    };
    if proto == 6 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.ip().octets());
        pseudo.extend_from_slice(&dst.ip().octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let sum = checksum(&pseudo);
        l4[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    let mut ip4 = vec![0x45, 0];
    ip4.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip4.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    ip4.extend_from_slice(&src.ip().octets());
    ip4.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&ip4);
    ip4[10..12].copy_from_slice(&sum.to_be_bytes());
    // The tap's vnet header (none of its offloads used), then Ethernet to the host side.
    let mut frame = vec![0u8; 10];
    frame.extend_from_slice(&link_mac(link));
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
    frame.extend_from_slice(&ip4);
    frame.extend_from_slice(&l4);
    let written = nix::unistd::write(tap, &frame).expect("write into the tap");
    assert_eq!(written, frame.len());
}

/// The namespace's "outside": a tap of the test's own (not a guest's: no `cop` prefix)
/// holding 192.0.2.1/24, where traffic to 192.0.2.0/24 leaves, conntracked and masqueraded
/// on the way, into the returned fd, which nobody reads (nothing leaves the namespace).
/// A tap and not a dummy link: this kernel may lack the dummy driver, never tun.
const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUTSIDE_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const OUTSIDE_LINK: &str = "out0";

fn add_outside_link() -> OwnedFd {
    let fd = tap_device::create(OUTSIDE_LINK).expect("outside tap");
    let batch = format!(
        "addr add {OUTSIDE_HOST}/24 dev {OUTSIDE_LINK}\nlink set {OUTSIDE_LINK} up\n\
         neigh replace {OUTSIDE_PEER} lladdr 02:00:00:00:00:63 dev {OUTSIDE_LINK} nud permanent\n"
    );
    run("ip", &["-batch", "-"], Some(&batch)).expect("the outside link");
    fd
}

/// Reverse-path filtering off, as it is by default in a new namespace: what drops a forged
/// packet in these tests is then coinop's rules, not the kernel's.
fn rp_filter_off(link: &str) {
    for conf in ["all", link] {
        let knob = format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter");
        std::fs::write(&knob, "0").expect("rp_filter off");
    }
}

#[test]
fn a_lease_network_is_set_up_forwarded_and_torn_down() {
    in_netns_with_records(move |records| {
        let net = GuestNetwork::start(settings(&records)).expect("network starts");
        assert_eq!(net.capacity(), 2, "a /29 holds two /30s");
        let (tap, info) = net.attach("lease-a").expect("attach");
        assert_eq!(
            (info.host_ip, info.guest_ip, info.prefix_len, info.ssh.port),
            (
                Ipv4Addr::new(10, 213, 0, 1),
                Ipv4Addr::new(10, 213, 0, 2),
                30,
                22000
            )
        );
        assert_eq!(info.ssh.host, "test-host");
        assert!(coinop_host::guest_network::cmdline_words(&info)
            .contains("coinop.ip=10.213.0.2/30 coinop.gw=10.213.0.1"));

        let link = link_json(&info.tap).expect("the tap exists");
        let addrs = link["addr_info"].to_string();
        assert!(
            addrs.contains("\"10.213.0.1\"") && addrs.contains("\"prefixlen\":30"),
            "{link}"
        );
        assert!(link["flags"].to_string().contains("\"UP\""), "{link}");
        // IPv4 only: no link-local IPv6 address a guest could reach the host on, and no
        // router advertisement from the guest taken.
        if Path::new("/proc/sys/net/ipv6").exists() {
            assert!(!addrs.contains("inet6"), "{link}");
            let knob = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", info.tap);
            assert_eq!(
                std::fs::read_to_string(&knob)
                    .expect("the tap's IPv6 knob")
                    .trim(),
                "1"
            );
        }
        let neigh = ip(&["neigh", "show", "dev", &info.tap]).expect("neigh");
        assert!(
            neigh.contains(&format!("10.213.0.2 lladdr {} PERMANENT", info.mac)),
            "{neigh}"
        );
        let forward = run("cat", &["/proc/sys/net/ipv4/ip_forward"], None).expect("sysctl");
        assert_eq!(forward.trim(), "1", "forwarding on in this namespace");
        let rules = ruleset();
        assert!(
            rules.contains("22000 comment \"lease lease-a\" : 10.213.0.2"),
            "{rules}"
        );
        assert!(rules.contains("masquerade"), "{rules}");
        let record = records.join("lease-a.net.json");
        let saved: NetInfo =
            serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
        assert_eq!(saved, info);

        // A connection to the forwarded port on the host's own address arrives on the tap
        // as a SYN for the guest's port 22.
        let target = SocketAddr::from((info.host_ip, info.ssh.port));
        let client = std::thread::spawn(move || {
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(3));
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        assert!(
            saw_syn_on_tap(&tap, info.guest_ip, &info.mac, deadline),
            "no SYN for {}:22 on {} after connecting to {target}",
            info.guest_ip,
            info.tap
        );
        let _ = client.join();

        let (_, second) = net.attach("lease-b").expect("second lease");
        assert_eq!((second.slot, second.ssh.port), (1, 22001));
        assert!(matches!(
            net.attach("lease-c"),
            Err(coinop_host::guest_network::NetError::Full(2))
        ));

        net.detach("lease-a");
        drop(tap);
        assert!(link_json(&info.tap).is_none(), "the tap is gone");
        let rules = ruleset();
        assert!(
            !rules.contains("10.213.0.2"),
            "lease-a's rules are gone:\n{rules}"
        );
        assert!(
            rules.contains("22001 comment \"lease lease-b\" : 10.213.0.6"),
            "lease-b's stay:\n{rules}"
        );
        assert!(!record.exists(), "the record is gone");
        assert!(net.info("lease-a").is_none());
        net.detach("lease-a");
    });
}

#[test]
fn a_crashed_daemons_left_overs_are_swept_and_live_guests_kept() {
    in_netns_with_records(move |records| {
        let before = GuestNetwork::start(settings(&records)).expect("network starts");
        let (live_tap, live) = before.attach("live").expect("live lease");
        let (dead_tap, dead) = before.attach("dead").expect("dead lease");
        // Each guest has a connection out, tracked.
        let _outside = add_outside_link();
        let peer = SocketAddrV4::new(OUTSIDE_PEER, 53);
        for (tap, info) in [(&live_tap, &live), (&dead_tap, &dead)] {
            let from = SocketAddrV4::new(info.guest_ip, 1000);
            send_into(tap, &info.tap, Segment::Udp, from, peer);
            assert_eq!(tracked_at_least(info.guest_ip, 1).len(), 1);
        }
        // coinopd dies without tearing anything down; the dead lease's VMM ends (its tap
        // fd closes) and a persistent tap from some earlier accident is lying around.
        std::mem::forget(before);
        drop(dead_tap);
        ip(&["tuntap", "add", "dev", "cop9", "mode", "tap"]).expect("stray tap");

        let after = GuestNetwork::start(settings(&records)).expect("network restarts");
        let rules = ruleset();
        assert!(
            rules.contains(&dead.guest_ip.to_string()),
            "start alone keeps every rule (live guests keep their NAT):\n{rules}"
        );
        after.readopt("live");
        after.sweep().expect("sweep");
        let rules = ruleset();
        assert!(!rules.contains(&dead.guest_ip.to_string()), "{rules}");
        assert!(
            rules.contains(&format!(
                "{} comment \"lease live\" : {}",
                live.ssh.port, live.guest_ip
            )),
            "{rules}"
        );
        assert!(link_json("cop9").is_none(), "the stray tap is removed");
        assert!(link_json(&live.tap).is_some(), "the live guest's tap stays");
        assert!(!records.join("dead.net.json").exists());
        assert!(records.join("live.net.json").exists());
        let flows = tracked(dead.guest_ip);
        assert!(flows.is_empty(), "the dead guest's: {flows:#?}");
        assert_eq!(tracked(live.guest_ip).len(), 1, "the live guest's stays");
        assert_eq!(after.info("live"), Some(live.clone()));
        // The dead lease's slot is free again; the live one's is not.
        let (_, next) = after.attach("next").expect("attach");
        assert_eq!(next.slot, dead.slot);
        drop(live_tap);
    });
}

/// A coinopd that recorded a second line's host key and died before the guest got that
/// line (or with the guest holding the first): its successor, told by the VMM which line
/// the guest holds (its CRC-32), names that line's key again; a line nobody recorded
/// changes nothing; detach removes the sent keys with the record.
#[test]
fn the_host_key_named_after_a_restart_is_the_one_the_guest_holds() {
    in_netns_with_records(move |records| {
        let before = GuestNetwork::start(settings(&records)).expect("network starts");
        let (tap, _) = before.attach("l1").expect("lease");
        before.set_host_key("l1", "ssh-ed25519 FIRST", 0x0000_0001);
        before.set_host_key("l1", "ssh-ed25519 SECOND", 0xdead_beef);
        std::mem::forget(before);

        let after = GuestNetwork::start(settings(&records)).expect("network restarts");
        after.readopt("l1");
        let named = |n: &GuestNetwork| n.info("l1").and_then(|i| i.ssh.host_key);
        assert_eq!(
            named(&after).as_deref(),
            Some("ssh-ed25519 SECOND"),
            "as recorded last"
        );
        assert!(
            !after.confirm_host_key("l1", 0x1234_5678),
            "a line nobody recorded"
        );
        assert_eq!(named(&after).as_deref(), Some("ssh-ed25519 SECOND"));
        assert!(
            after.confirm_host_key("l1", 0x0000_0001),
            "the guest holds the first line"
        );
        assert_eq!(named(&after).as_deref(), Some("ssh-ed25519 FIRST"));
        // And the record says so too: a third coinopd reads the corrected key.
        std::mem::forget(after);
        let third = GuestNetwork::start(settings(&records)).expect("network restarts");
        third.readopt("l1");
        assert_eq!(named(&third).as_deref(), Some("ssh-ed25519 FIRST"));
        third.detach("l1");
        let left: Vec<_> = std::fs::read_dir(&records)
            .expect("records")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("l1"))
            .collect();
        assert!(left.is_empty(), "nothing of l1 left: {left:?}");
        drop(tap);
    });
}

/// The VMM starts on a reserved network (its tap, down, and no rules); routing it adds the
/// rest, and a route that comes after the lease was detached (its boot failed) leaves
/// nothing behind.
#[test]
fn a_reserved_network_is_routed_later_or_not_at_all() {
    in_netns_with_records(move |records| {
        let net = GuestNetwork::start(settings(&records)).expect("network starts");
        let (_first_tap, first) = net.attach("first").expect("attach");
        let (tap, info, pending) = net.reserve("lease-a").expect("reserve");
        assert_eq!(net.info("lease-a"), Some(info.clone()), "the tenant's view");
        assert!(
            records.join("lease-a.net.json").exists(),
            "recorded at once"
        );
        let link = link_json(&info.tap).expect("the tap exists");
        assert!(
            !link["flags"].to_string().contains("\"UP\""),
            "down until routed: {link}"
        );
        assert_eq!(link["addr_info"], serde_json::json!([]), "{link}");
        let rules = ruleset();
        assert!(!rules.contains(&info.guest_ip.to_string()), "{rules}");

        net.route(pending).expect("route");
        let link = link_json(&info.tap).expect("the tap exists");
        assert!(link["flags"].to_string().contains("\"UP\""), "{link}");
        assert!(
            link["addr_info"].to_string().contains("\"10.213.0.5\""),
            "{link}"
        );
        let rules = ruleset();
        assert!(
            rules.contains(&format!(
                "22001 comment \"lease lease-a\" : {}",
                info.guest_ip
            )),
            "{rules}"
        );
        assert!(
            rules.contains(&format!(
                "22000 comment \"lease first\" : {}",
                first.guest_ip
            )),
            "adding one lease leaves the others' elements: {rules}"
        );

        // A boot that failed before its route ran: detached first, routed after.
        drop(tap);
        net.detach("lease-a");
        let (tap_b, again, late) = net.reserve("lease-b").expect("the slot is free again");
        assert_eq!(again.slot, info.slot);
        net.detach("lease-b");
        drop(tap_b);
        let (_tap_c, _, current) = net.reserve("lease-b").expect("reserved anew");
        net.route(late).expect("a stale route is no error");
        let rules = ruleset();
        assert!(!rules.contains("lease lease-b"), "{rules}");
        assert!(!rules.contains("lease lease-a"), "{rules}");
        net.route(current).expect("the current one routes");
        assert!(ruleset().contains("lease lease-b"));
        net.detach("lease-b");
        let rules = ruleset();
        assert!(!rules.contains("lease lease-b"), "{rules}");
        assert!(rules.contains("lease first"), "{rules}");
    });
}

/// One claim on guest networking per network namespace: a second taker is refused naming
/// the holder, a taker in another namespace is not, and a dropped claim is free again (its
/// file gone). A directory others may write to is refused.
#[test]
fn guest_networking_is_claimed_once_per_network_namespace() {
    use coinop_host::guest_network::netns_claim::{ClaimError, NetnsClaim};
    in_netns_with_records(move |dir| {
        let claims = dir.join("claims");
        let first = NetnsClaim::take_in(&claims).expect("first claim");
        match NetnsClaim::take_in(&claims) {
            Err(ClaimError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second claim in the same namespace: {other:?}"),
        }
        let elsewhere = claims.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            drop(NetnsClaim::take_in(&elsewhere).expect("another namespace's claim"));
        })
        .join()
        .expect("the other namespace's thread");
        drop(first);
        let files = || std::fs::read_dir(&claims).expect("claims").count();
        assert_eq!(files(), 0, "the claim's file goes with it");
        drop(NetnsClaim::take_in(&claims).expect("free again"));

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&claims, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(
            matches!(
                NetnsClaim::take_in(&claims),
                Err(ClaimError::UnsafeDir { .. })
            ),
            "a directory anyone may write to"
        );
    });
}

/// Anti-spoofing covers everything a tap sends, traffic to the host itself included: a
/// guest forging the source of a peer the host talks to cannot slip a "reply" into the
/// host's conversation with it (conntrack would call it established, whatever the link it
/// came in by).
#[test]
fn a_forged_reply_from_a_tap_does_not_reach_the_host() {
    in_netns_with_records(move |records| {
        let net = GuestNetwork::start(settings(&records)).expect("network starts");
        let (tap, info) = net.attach("lease-a").expect("attach");
        let _outside = add_outside_link();
        rp_filter_off(&info.tap);
        // A conversation of the host's own with a peer outside: tracked, its replies
        // established.
        let socket = UdpSocket::bind((OUTSIDE_HOST, 0)).expect("bind");
        socket.connect((OUTSIDE_PEER, 5000)).expect("connect");
        socket.send(b"hello").expect("send");
        let host_end = match socket.local_addr().expect("local addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let peer = SocketAddrV4::new(OUTSIDE_PEER, 5000);
        send_into(&tap, &info.tap, Segment::Udp, peer, host_end);
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let got = socket.recv(&mut buf);
        assert!(
            got.is_err(),
            "a reply forged on {} reached the host's socket: {got:?}",
            info.tap
        );
    });
}

/// Nothing reaches a guest but replies to its own connections and the SSH forward: not a
/// connection the host (any local user) makes to the guest's address, to any port, nor
/// one routed through the host from its LAN; the forwarded port still reaches port 22,
/// from the host and from the LAN.
#[test]
fn a_guest_is_reached_only_through_its_ssh_forward() {
    in_netns_with_records(move |records| {
        let net = GuestNetwork::start(settings(&records)).expect("network starts");
        let (tap, info) = net.attach("lease-a").expect("attach");
        let guest = info.guest_ip;
        // A LAN the host routes for: a tap of the test's own, its far end played by the
        // test (a LAN host 198.51.100.2 routing to the guests' pool via the host).
        let lan = tap_device::create("lan0").expect("LAN tap");
        run(
            "ip",
            &["-batch", "-"],
            Some("addr add 198.51.100.1/24 dev lan0\nlink set lan0 up\n"),
        )
        .expect("the LAN link");
        rp_filter_off("lan0");
        let lan_host = Ipv4Addr::new(198, 51, 100, 2);
        let soon = || Instant::now() + Duration::from_millis(700);

        // From the host itself, straight to the guest's address: 80, and 22 too.
        for port in [80, 22] {
            let target = SocketAddr::from((guest, port));
            let client = std::thread::spawn(move || {
                let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
            });
            assert!(
                !saw_syn_to_port(&tap, SocketAddrV4::new(guest, port), &info.mac, soon()),
                "a local connection to {guest}:{port} reached the guest"
            );
            let _ = client.join();
        }
        // From the LAN, straight to the guest's address.
        for port in [80, 22] {
            let from = SocketAddrV4::new(lan_host, 40_000 + port);
            send_into(
                &lan,
                "lan0",
                Segment::Syn,
                from,
                SocketAddrV4::new(guest, port),
            );
            assert!(
                !saw_syn_to_port(&tap, SocketAddrV4::new(guest, port), &info.mac, soon()),
                "a LAN host's connection to {guest}:{port} reached the guest"
            );
        }
        // The forwarded port, from the LAN and from the host.
        let lan_side = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), info.ssh.port);
        send_into(
            &lan,
            "lan0",
            Segment::Syn,
            SocketAddrV4::new(lan_host, 40_100),
            lan_side,
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        assert!(
            saw_syn_on_tap(&tap, guest, &info.mac, deadline),
            "the LAN's connection to the forwarded port {lan_side} did not reach {guest}:22"
        );
        let target = SocketAddr::from((info.host_ip, info.ssh.port));
        let client = std::thread::spawn(move || {
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(3));
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        assert!(
            saw_syn_on_tap(&tap, guest, &info.mac, deadline),
            "the host's connection to the forwarded port {target} did not reach {guest}:22"
        );
        let _ = client.join();
    });
}

/// A guest has at most `flows_per_guest` new connections tracked at once: the next new one
/// is dropped, so a guest forging flows cannot fill the host's conntrack table (which
/// would drop every tenant's and the host's new connections). Each guest has a share of
/// its own.
#[test]
fn a_guest_has_at_most_its_share_of_tracked_connections() {
    in_netns_with_records(move |records| {
        let settings = NetworkSettings {
            flows_per_guest: 3,
            ..settings(&records)
        };
        let net = GuestNetwork::start(settings).expect("network starts");
        let (tap, info) = net.attach("lease-a").expect("attach");
        let (tap_b, b) = net.attach("lease-b").expect("attach");
        let _outside = add_outside_link();
        let peer = SocketAddrV4::new(OUTSIDE_PEER, 53);
        for port in 1000..1005 {
            let from = SocketAddrV4::new(info.guest_ip, port);
            send_into(&tap, &info.tap, Segment::Udp, from, peer);
        }
        let flows = tracked_at_least(info.guest_ip, 3);
        assert_eq!(flows.len(), 3, "3 of 5 new flows tracked: {flows:#?}");
        assert!(
            flows
                .iter()
                .all(|f| f.contains(&format!("dst={OUTSIDE_HOST} "))),
            "masqueraded on the way out: {flows:#?}"
        );
        let from = SocketAddrV4::new(b.guest_ip, 1000);
        send_into(&tap_b, &b.tap, Segment::Udp, from, peer);
        let flows = tracked_at_least(b.guest_ip, 1);
        assert_eq!(flows.len(), 1, "the other guest's share: {flows:#?}");
    });
}

/// A stopped lease's tracked connections go with it, before its slot is free: those its
/// guest made (masqueraded) and those made to it through its forwarded port; other
/// guests' stay. Left alone, a next lease on the address would inherit them, and they
/// would hold their share of the host's table until they time out.
#[test]
fn a_detached_guests_tracked_connections_are_deleted() {
    in_netns_with_records(move |records| {
        let net = GuestNetwork::start(settings(&records)).expect("network starts");
        let (tap, info) = net.attach("lease-a").expect("attach");
        let (tap_b, b) = net.attach("lease-b").expect("attach");
        let _outside = add_outside_link();
        let peer = SocketAddrV4::new(OUTSIDE_PEER, 53);
        send_into(
            &tap,
            &info.tap,
            Segment::Udp,
            SocketAddrV4::new(info.guest_ip, 1000),
            peer,
        );
        send_into(
            &tap_b,
            &b.tap,
            Segment::Udp,
            SocketAddrV4::new(b.guest_ip, 1000),
            peer,
        );
        let target = SocketAddr::from((info.host_ip, info.ssh.port));
        let client = std::thread::spawn(move || {
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
        });
        let flows = tracked_at_least(info.guest_ip, 2);
        let reply_from_22 = format!("src={} dst={} sport=22 ", info.guest_ip, info.host_ip);
        assert!(
            flows
                .iter()
                .any(|f| f.contains(&format!("src={} ", info.guest_ip)) && f.contains("udp")),
            "the guest's own, masqueraded: {flows:#?}"
        );
        assert!(
            flows
                .iter()
                .any(|f| f.contains("tcp") && f.contains(&reply_from_22)),
            "the one DNATed to its port 22 (answered from there): {flows:#?}"
        );
        assert_eq!(tracked_at_least(b.guest_ip, 1).len(), 1);

        net.detach("lease-a");
        let flows = tracked(info.guest_ip);
        assert!(flows.is_empty(), "left after detach: {flows:#?}");
        assert_eq!(tracked(b.guest_ip).len(), 1, "the other guest's stay");
        net.detach("lease-a");
        let _ = client.join();
        drop(tap);
    });
}

/// A local user listening on a forwarded port's IPv6 side (which a tenant's SSH client,
/// told a host name with an IPv6 address too, would try first) is never reached there: the
/// connection is reset, and the client goes on to the IPv4 address. Ports outside the
/// range are left alone.
#[test]
fn a_listener_on_a_forwarded_ports_ipv6_side_is_never_reached() {
    if !Path::new("/proc/sys/net/ipv6").exists() {
        skipped("no IPv6 on this host");
        return;
    }
    in_netns_with_records(move |records| {
        use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
        let any = |port| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
        let local = |port| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
        // Outside the range, a listener answers: the namespace's IPv6 works.
        let outside = TcpListener::bind(any(23000)).expect("a listener outside the range");
        TcpStream::connect_timeout(&local(23000), Duration::from_secs(5))
            .expect("a connection outside the range");
        drop(outside);

        let squatter = TcpListener::bind(any(22003)).expect("a listener on a forwarded port");
        squatter.set_nonblocking(true).expect("nonblocking");
        let _net = GuestNetwork::start(settings(&records)).expect("network starts");
        let refused = TcpStream::connect_timeout(&local(22003), Duration::from_secs(5))
            .expect_err("an IPv6 connection to a forwarded port went through");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        assert!(squatter.accept().is_err(), "the listener got a connection");
        let guard = run("nft", &["list", "table", "ip6", "coinop"], None).expect("nft list");
        assert!(
            guard.contains("tcp dport 22000-22009 reject with tcp reset"),
            "{guard}"
        );
    });
}
