//! Who is on the other end of the Unix socket (SO_PEERCRED), and whether that peer may call
//! operator endpoints.

use tokio::net::UnixStream;

/// The peer's credentials, taken once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl PeerCred {
    /// The credentials of the process that connected `stream` (as they were at connect).
    pub fn of(stream: &UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(c) => PeerCred {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
            },
            // Unknown credentials must never grant operator rights.
            Err(_) => PeerCred {
                uid: None,
                gid: None,
                pid: None,
            },
        }
    }
}

/// Who counts as the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OperatorPolicy {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl OperatorPolicy {
    /// Root, the configured uid, or the configured gid (primary group of the peer process).
    pub fn allows(&self, peer: &PeerCred) -> bool {
        match (peer.uid, peer.gid) {
            (Some(0), _) => true,
            (Some(uid), _) if Some(uid) == self.uid => true,
            (_, Some(gid)) if Some(gid) == self.gid => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCred {
        PeerCred {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
        }
    }

    #[test]
    fn root_and_configured_ids_are_operators() {
        let p = OperatorPolicy {
            uid: Some(1000),
            gid: Some(50),
        };
        assert!(p.allows(&peer(0, 0)));
        assert!(p.allows(&peer(1000, 1000)));
        assert!(p.allows(&peer(1001, 50)));
        assert!(!p.allows(&peer(1001, 1001)));
    }

    #[test]
    fn unknown_credentials_are_not_operators() {
        let p = OperatorPolicy::default();
        assert!(!p.allows(&PeerCred {
            uid: None,
            gid: None,
            pid: None
        }));
        assert!(!p.allows(&peer(65534, 65534)));
    }
}
