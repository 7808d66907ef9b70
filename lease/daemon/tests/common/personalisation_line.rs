//! What the test guest (images/testguest, `mode=personalise`) says about the line it got
//! on the personalisation port (images/rootfs/PERSONALISE.md): it prints each as
//! `personalised: LINE` on its console.

/// The lines the guest printed as `personalised: LINE` in console text `text`.
pub fn personalised(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("personalised: "))
        .map(str::to_string)
        .collect()
}

/// The value of `key` in a personalisation line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The one line the guest of lease `id` printed in console text `text`, checked against
/// the protocol: its header, `hostname` = the lease id, 256 bits of hex entropy and the
/// host's clock (within two minutes).
pub fn the_one_line(text: &str, id: &str) -> String {
    let lines = personalised(text);
    assert_eq!(lines.len(), 1, "one line per guest:\n{text}");
    let line = lines[0].clone();
    assert!(line.starts_with("coinop-personalise/1 "), "{line}");
    assert_eq!(field(&line, "hostname"), Some(id), "{line}");
    let entropy = field(&line, "entropy").expect("entropy");
    assert_eq!(entropy.len(), 64, "{line}");
    assert!(entropy.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    let time: f64 = field(&line, "time")
        .and_then(|t| t.parse().ok())
        .expect("time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    assert!(
        (now - time).abs() < 120.0,
        "the host's clock: {time} vs {now}: {line}"
    );
    line
}

/// Whether `openssh` (`ssh-ed25519 BASE64`, as a lease names its guest's host key) is the
/// public half of the line's `host_key` (128 hex digits: seed, then public key). The wire
/// blob is the string "ssh-ed25519" then the string of the 32-byte key (RFC 8709): the key
/// is its last 32 bytes.
pub fn names_the_lines_host_key(openssh: &str, line: &str) -> bool {
    use base64::Engine as _;
    let Some(public) = field(line, "host_key").and_then(|v| v.get(64..)) else {
        return false;
    };
    let Some(blob) = openssh
        .strip_prefix("ssh-ed25519 ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    else {
        return false;
    };
    blob.len() == 51 && hex::encode(&blob[19..]) == public
}
