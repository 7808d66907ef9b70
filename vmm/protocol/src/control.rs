//! The control socket: a client writes one [`Request`] line, the VMM answers one [`Reply`]
//! line.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// A control request, tagged by its `cmd` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// State, vCPUs, memory and uptime: answered with [`Reply::Status`].
    Status,
    /// Park every vCPU: answered with [`Reply::State`] once they are parked.
    Pause,
    /// Let the vCPUs run again: [`Reply::State`].
    Resume,
    /// CPU time per vCPU, memory and uptime: [`Reply::Usage`].
    Usage,
    /// UTF-8 text for the guest's COM1: [`Reply::Done`] once queued.
    ConsoleInput {
        /// The text.
        data: String,
    },
    /// End the VM: [`Reply::State`] (`stopping`), then the VMM exits.
    Stop,
    /// Pause every vCPU, write the guest's state and memory into the directory `dir`
    /// (created if missing), then resume, or with `exit` end the VMM (reason `stopped`):
    /// [`Reply::State`] once the snapshot is on disk (`running`, `paused` for a guest that
    /// was paused before, or `stopping`). `coinop-vmm --restore DIR` starts from it.
    Snapshot {
        /// Directory for the `state` and `memory` files.
        dir: String,
        /// End the VMM once the snapshot is written, instead of resuming.
        #[serde(default)]
        exit: bool,
    },
    /// The guest's per-lease line for the personalisation port (COM2): printable ASCII
    /// (0x20-0x7e), at most [`Request::PERSONALISE_LINE_MAX`] bytes. The VMM queues
    /// `line` + `\n` for the guest, delivered once the guest has written 124 to the boot
    /// timer (at once if it already has): [`Reply::Done`] once queued. Accepted once per
    /// guest; a second one, or a bad line, is refused and nothing is delivered.
    Personalise {
        /// The line, without its newline.
        line: String,
    },
    /// Rings the personalisation port: its modem status register shows the ring indicator
    /// (MSR bit 6) from now until a `personalise` line is accepted. A guest waiting for its
    /// line learns that it has time to spare (coinopd rings guests restored ahead of their
    /// lease) and may spend it on its first connection's costs; a guest that never reads
    /// MSR is unaffected. [`Reply::Done`]; a guest that already has its line is refused.
    Ring,
}

impl Request {
    /// Every `cmd` the VMM knows; any other is refused as an unknown command. The unit tests
    /// keep this in step with the enum and with [`Request::from_line`].
    pub const COMMANDS: [&'static str; 9] = [
        "status",
        "pause",
        "resume",
        "usage",
        "console_input",
        "stop",
        "snapshot",
        "personalise",
        "ring",
    ];

    /// The longest `personalise` line the VMM accepts, in bytes (newline not counted).
    pub const PERSONALISE_LINE_MAX: usize = 4096;

    /// The `cmd` of this request.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Usage => "usage",
            Request::ConsoleInput { .. } => "console_input",
            Request::Stop => "stop",
            Request::Snapshot { .. } => "snapshot",
            Request::Personalise { .. } => "personalise",
            Request::Ring => "ring",
        }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> String {
        crate::to_line(self)
    }

    /// Reads one request line the way the VMM does; the error's text is what the VMM puts
    /// in the `error` of its refusal.
    ///
    /// The object is read by hand, not through the derived `Deserialize`, with the same
    /// outcome and error texts (the test `from_line_agrees_with_the_derived_deserialize`
    /// compares them). The derived path buffers the object in serde's internally tagged
    /// `Content` and, through serde's `Unexpected` display, links core's float formatting:
    /// tens of KiB of text in coinop-vmm, whose text pages are all resident, so its peak RSS
    /// pays for every byte.
    pub fn from_line(line: &str) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_str(line.trim()).map_err(RequestError::NotJson)?;
        let Some(cmd) = value.get("cmd").and_then(Value::as_str) else {
            return Err(RequestError::NoCommand);
        };
        match cmd {
            "status" => Ok(Request::Status),
            "pause" => Ok(Request::Pause),
            "resume" => Ok(Request::Resume),
            "usage" => Ok(Request::Usage),
            "stop" => Ok(Request::Stop),
            "ring" => Ok(Request::Ring),
            "console_input" => match value.get("data") {
                Some(Value::String(data)) => Ok(Request::ConsoleInput { data: data.clone() }),
                other => Err(RequestError::BadArguments {
                    cmd: "console_input",
                    detail: not_a_string("data", other),
                }),
            },
            "snapshot" => {
                let dir = match value.get("dir") {
                    Some(Value::String(dir)) => dir.clone(),
                    other => {
                        return Err(RequestError::BadArguments {
                            cmd: "snapshot",
                            detail: wrong_type("dir", other, "a string"),
                        })
                    }
                };
                let exit = match value.get("exit") {
                    None => false,
                    Some(Value::Bool(exit)) => *exit,
                    other => {
                        return Err(RequestError::BadArguments {
                            cmd: "snapshot",
                            detail: wrong_type("exit", other, "a boolean"),
                        })
                    }
                };
                Ok(Request::Snapshot { dir, exit })
            }
            "personalise" => match value.get("line") {
                Some(Value::String(line)) => Ok(Request::Personalise { line: line.clone() }),
                other => Err(RequestError::BadArguments {
                    cmd: "personalise",
                    detail: not_a_string("line", other),
                }),
            },
            _ => Err(RequestError::UnknownCommand(cmd.to_string())),
        }
    }
}

/// The error the derived `Deserialize` gives, through serde_json, for a `String` field that
/// is absent or holds something else, e.g. "invalid type: integer `5`, expected a string".
/// The found value is named as serde_json names it (`null`, not serde's `unit value`; floats
/// as its `Number` prints them).
fn not_a_string(field: &'static str, found: Option<&Value>) -> serde_json::Error {
    wrong_type(field, found, "a string")
}

/// [`not_a_string`] for a field of any type; `expected` as serde words it ("a boolean").
fn wrong_type(field: &'static str, found: Option<&Value>, expected: &str) -> serde_json::Error {
    use serde::de::Error;
    let found = match found {
        None => return serde_json::Error::missing_field(field),
        Some(Value::Null) => "null".to_string(),
        Some(Value::Bool(b)) => format!("boolean `{b}`"),
        Some(Value::Number(n)) if n.is_f64() => format!("floating point `{n}`"),
        Some(Value::Number(n)) => format!("integer `{n}`"),
        Some(Value::String(s)) => format!("string {s:?}"),
        Some(Value::Array(_)) => "sequence".to_string(),
        Some(Value::Object(_)) => "map".to_string(),
    };
    serde_json::Error::custom(format_args!("invalid type: {found}, expected {expected}"))
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The line is not JSON at all.
    #[error("request is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// No string `cmd` (not an object, no `cmd`, or `cmd` not a string).
    #[error("request needs a string field 'cmd'")]
    NoCommand,
    /// A `cmd` the VMM does not know.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A known command whose other fields are missing or of the wrong type (e.g.
    /// `console_input` without a string `data`).
    #[error("bad arguments to '{cmd}': {detail}")]
    BadArguments {
        /// The command.
        cmd: &'static str,
        /// What serde found wrong.
        detail: serde_json::Error,
    },
}

/// The state a guest is in, or is now asked to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The vCPUs run the guest.
    Running,
    /// Every vCPU is parked; its CPU time stays flat.
    Paused,
    /// The VM is ending.
    Stopping,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// What the vCPUs are asked to do.
    pub state: VmState,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// µs since the time base (as events' `t_us`).
    pub uptime_us: u64,
    /// The CRC-32 (IEEE) of the `personalise` line this VMM accepted (its bytes, newline
    /// excluded); absent while it has none, or when its line came with the snapshot it was
    /// restored from. Not a secret (the line's entropy is 256 bits), and not a security
    /// check: it tells coinopd which of the lines it made (each with its own SSH host key)
    /// the guest got, after a restart lost that.
    pub line_crc32: Option<u32>,
    /// How long (µs) a `ring` has waited for a guest in doorbell mode to heed it (write
    /// 0xda to the port's scratch register); absent once heeded, when the guest was not
    /// rung, or when it does not use the doorbell. A guest that turned the doorbell on and
    /// leaves a ring unheeded for long runs nothing that listens: coinopd gives such a warm
    /// restore up before a create takes it.
    pub ring_unheeded_us: Option<u64>,
}

/// The answer to `usage`: what metering bills.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// CPU time each vCPU thread really consumed (the kernel's per-thread accounting), µs,
    /// by vCPU index. Flat while paused.
    pub vcpu_us: Vec<u64>,
    /// The sum of `vcpu_us`.
    pub vcpu_total_us: u64,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// µs since the time base.
    pub uptime_us: u64,
    /// What the vCPUs are asked to do, as `status` says: a metering client learns whether
    /// a guest whose CPU time stood still is paused or idle without a second request.
    /// Absent from the replies of VMMs older than this field (ask `status` then).
    #[serde(default)]
    pub state: Option<VmState>,
}

/// One reply line. On the wire every reply has `ok`: `true` with the answer's fields beside
/// it, or `false` with `error`:
/// ```text
/// {"mem_mib":128,"ok":true,"state":"running","uptime_us":53122,"vcpus":2}   Status
/// {"mem_mib":128,"ok":true,"state":"running","uptime_us":60210,"vcpu_total_us":2500,"vcpu_us":[1520,980]}
/// {"ok":true,"state":"paused"}                                              State
/// {"ok":true}                                                               Done
/// {"error":"unknown command 'bogus'","ok":false}                            Error
/// ```
/// A reader tells the answers apart by their fields (`vcpu_us`/`vcpu_total_us` make a
/// usage, `vcpus` a status, `state` alone a state), so it need not remember what it asked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireReply")]
pub enum Reply {
    /// `status`.
    Status(Status),
    /// `usage`.
    Usage(Usage),
    /// `pause`, `resume`, `stop`: the state the guest is now asked to be in.
    State(VmState),
    /// `console_input`: accepted.
    Done,
    /// The request was refused: why, for a human.
    Error(String),
}

impl Reply {
    /// The reply as one line, newline included.
    pub fn to_line(&self) -> String {
        crate::to_line(self)
    }

    /// Reads one reply line (surrounding whitespace and the newline are ignored).
    pub fn from_line(line: &str) -> Result<Reply, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// Why a JSON object is not a [`Reply`].
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// A field the reply's kind needs is absent.
    #[error("{kind} reply without '{field}'")]
    Missing {
        /// `error`, `status` or `usage`.
        kind: &'static str,
        /// The absent field.
        field: &'static str,
    },
}

/// Written out by hand rather than derived through [`WireReply`], so that coinop-vmm, which
/// answers every request with it, links no clone of the reply and no `Option` handling per
/// field. The keys come in alphabetical order, as the VMM's replies always have (they were
/// `serde_json` maps, which sort); the pinned lines in the tests hold the bytes.
impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = match self {
            Reply::Status(s) => {
                5 + usize::from(s.line_crc32.is_some()) + usize::from(s.ring_unheeded_us.is_some())
            }
            Reply::Usage(u) => 5 + usize::from(u.state.is_some()),
            Reply::State(_) | Reply::Error(_) => 2,
            Reply::Done => 1,
        };
        let mut reply = serializer.serialize_struct("WireReply", len)?;
        match self {
            Reply::Status(s) => {
                if let Some(crc) = s.line_crc32 {
                    reply.serialize_field("line_crc32", &crc)?;
                }
                reply.serialize_field("mem_mib", &s.mem_mib)?;
                reply.serialize_field("ok", &true)?;
                if let Some(us) = s.ring_unheeded_us {
                    reply.serialize_field("ring_unheeded_us", &us)?;
                }
                reply.serialize_field("state", &s.state)?;
                reply.serialize_field("uptime_us", &s.uptime_us)?;
                reply.serialize_field("vcpus", &s.vcpus)?;
            }
            Reply::Usage(u) => {
                reply.serialize_field("mem_mib", &u.mem_mib)?;
                reply.serialize_field("ok", &true)?;
                if let Some(state) = u.state {
                    reply.serialize_field("state", &state)?;
                }
                reply.serialize_field("uptime_us", &u.uptime_us)?;
                reply.serialize_field("vcpu_total_us", &u.vcpu_total_us)?;
                reply.serialize_field("vcpu_us", &u.vcpu_us)?;
            }
            Reply::State(state) => {
                reply.serialize_field("ok", &true)?;
                reply.serialize_field("state", state)?;
            }
            Reply::Done => reply.serialize_field("ok", &true)?,
            Reply::Error(error) => {
                reply.serialize_field("error", error)?;
                reply.serialize_field("ok", &false)?;
            }
        }
        reply.end()
    }
}

/// Every field any reply has, flat, as on the wire: what a [`Reply`] is read from.
#[derive(Debug, Deserialize)]
struct WireReply {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    line_crc32: Option<u32>,
    #[serde(default)]
    mem_mib: Option<u64>,
    ok: bool,
    #[serde(default)]
    ring_unheeded_us: Option<u64>,
    #[serde(default)]
    state: Option<VmState>,
    #[serde(default)]
    uptime_us: Option<u64>,
    #[serde(default)]
    vcpu_total_us: Option<u64>,
    #[serde(default)]
    vcpu_us: Option<Vec<u64>>,
    #[serde(default)]
    vcpus: Option<u32>,
}

impl TryFrom<WireReply> for Reply {
    type Error = ReplyError;

    fn try_from(w: WireReply) -> Result<Reply, ReplyError> {
        fn need<T>(
            value: Option<T>,
            kind: &'static str,
            field: &'static str,
        ) -> Result<T, ReplyError> {
            value.ok_or(ReplyError::Missing { kind, field })
        }
        if !w.ok {
            return Ok(Reply::Error(need(w.error, "error", "error")?));
        }
        if w.vcpu_us.is_some() || w.vcpu_total_us.is_some() {
            return Ok(Reply::Usage(Usage {
                vcpu_us: need(w.vcpu_us, "usage", "vcpu_us")?,
                vcpu_total_us: need(w.vcpu_total_us, "usage", "vcpu_total_us")?,
                mem_mib: need(w.mem_mib, "usage", "mem_mib")?,
                uptime_us: need(w.uptime_us, "usage", "uptime_us")?,
                state: w.state,
            }));
        }
        if w.vcpus.is_some() {
            return Ok(Reply::Status(Status {
                state: need(w.state, "status", "state")?,
                vcpus: need(w.vcpus, "status", "vcpus")?,
                mem_mib: need(w.mem_mib, "status", "mem_mib")?,
                uptime_us: need(w.uptime_us, "status", "uptime_us")?,
                line_crc32: w.line_crc32,
                ring_unheeded_us: w.ring_unheeded_us,
            }));
        }
        Ok(w.state.map_or(Reply::Done, Reply::State))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request lines as clients (coinopd's `json!` maps, the integration tests) write them.
    fn pinned_requests() -> Vec<(&'static str, Request)> {
        vec![
            (r#"{"cmd":"status"}"#, Request::Status),
            (r#"{"cmd":"pause"}"#, Request::Pause),
            (r#"{"cmd":"resume"}"#, Request::Resume),
            (r#"{"cmd":"usage"}"#, Request::Usage),
            (
                r#"{"cmd":"console_input","data":"hi\n"}"#,
                Request::ConsoleInput {
                    data: "hi\n".into(),
                },
            ),
            (r#"{"cmd":"stop"}"#, Request::Stop),
            (
                r#"{"cmd":"snapshot","dir":"/srv/snap","exit":true}"#,
                Request::Snapshot {
                    dir: "/srv/snap".into(),
                    exit: true,
                },
            ),
            (
                r#"{"cmd":"personalise","line":"coinop-personalise/1 hostname=a"}"#,
                Request::Personalise {
                    line: "coinop-personalise/1 hostname=a".into(),
                },
            ),
            (r#"{"cmd":"ring"}"#, Request::Ring),
        ]
    }

    /// Each line is copied from what coinop-vmm answered before this crate existed, or, for
    /// a field added since, what it answers now. Older lines stay: a coinopd re-adopts the
    /// VMMs an older coinopd started, and reads their replies.
    fn pinned_replies() -> Vec<(&'static str, Reply)> {
        vec![
            (
                r#"{"mem_mib":128,"ok":true,"state":"running","uptime_us":312530,"vcpus":2}"#,
                Reply::Status(Status {
                    state: VmState::Running,
                    vcpus: 2,
                    mem_mib: 128,
                    uptime_us: 312530,
                    line_crc32: None,
                    ring_unheeded_us: None,
                }),
            ),
            (
                r#"{"line_crc32":3632233996,"mem_mib":256,"ok":true,"state":"running","uptime_us":90210,"vcpus":1}"#,
                Reply::Status(Status {
                    state: VmState::Running,
                    vcpus: 1,
                    mem_mib: 256,
                    uptime_us: 90210,
                    line_crc32: Some(3_632_233_996),
                    ring_unheeded_us: None,
                }),
            ),
            (
                r#"{"mem_mib":256,"ok":true,"ring_unheeded_us":2500000,"state":"running","uptime_us":3190210,"vcpus":1}"#,
                Reply::Status(Status {
                    state: VmState::Running,
                    vcpus: 1,
                    mem_mib: 256,
                    uptime_us: 3_190_210,
                    line_crc32: None,
                    ring_unheeded_us: Some(2_500_000),
                }),
            ),
            (
                r#"{"mem_mib":128,"ok":true,"uptime_us":312781,"vcpu_total_us":137788,"vcpu_us":[136667,1121]}"#,
                Reply::Usage(Usage {
                    vcpu_us: vec![136667, 1121],
                    vcpu_total_us: 137788,
                    mem_mib: 128,
                    uptime_us: 312781,
                    state: None,
                }),
            ),
            // Since usage says the run state too.
            (
                r#"{"mem_mib":256,"ok":true,"state":"paused","uptime_us":4100230,"vcpu_total_us":88012,"vcpu_us":[88012]}"#,
                Reply::Usage(Usage {
                    vcpu_us: vec![88012],
                    vcpu_total_us: 88012,
                    mem_mib: 256,
                    uptime_us: 4_100_230,
                    state: Some(VmState::Paused),
                }),
            ),
            (
                r#"{"ok":true,"state":"paused"}"#,
                Reply::State(VmState::Paused),
            ),
            (
                r#"{"ok":true,"state":"running"}"#,
                Reply::State(VmState::Running),
            ),
            (
                r#"{"ok":true,"state":"stopping"}"#,
                Reply::State(VmState::Stopping),
            ),
            (r#"{"ok":true}"#, Reply::Done),
            (
                r#"{"error":"unknown command 'bogus'","ok":false}"#,
                Reply::Error("unknown command 'bogus'".into()),
            ),
            (
                r#"{"error":"request line too long","ok":false}"#,
                Reply::Error("request line too long".into()),
            ),
        ]
    }

    #[test]
    fn requests_are_the_lines_clients_send() {
        crate::assert_pinned(pinned_requests(), Request::to_line, Request::from_line);
    }

    #[test]
    fn requests_ignore_unknown_fields() {
        // Unknown fields are ignored, as the VMM always did.
        assert_eq!(
            Request::from_line(r#"{"cmd":"status","id":7}"#).expect("status"),
            Request::Status
        );
    }

    #[test]
    fn every_command_is_listed() {
        for (_, request) in pinned_requests() {
            assert!(Request::COMMANDS.contains(&request.cmd()), "{request:?}");
            let json = serde_json::to_value(&request).expect("serializes");
            assert_eq!(json["cmd"], request.cmd());
        }
        assert_eq!(pinned_requests().len(), Request::COMMANDS.len());
    }

    #[test]
    fn refusals_keep_the_vmm_texts() {
        let text = |line: &str| Request::from_line(line).expect_err("refused").to_string();
        assert_eq!(text(r#"{"cmd":"bogus"}"#), "unknown command 'bogus'");
        assert_eq!(
            text("not json"),
            "request is not JSON: expected ident at line 1 column 2"
        );
        for no_cmd in ["{}", "[1,2]", r#"{"cmd":42}"#] {
            assert_eq!(text(no_cmd), "request needs a string field 'cmd'");
        }
        assert_eq!(
            text(r#"{"cmd":"console_input"}"#),
            "bad arguments to 'console_input': missing field `data`"
        );
        assert!(text(r#"{"cmd":"console_input","data":5}"#)
            .starts_with("bad arguments to 'console_input': invalid type: integer `5`"));
    }

    #[test]
    fn snapshot_exit_defaults_to_resume_and_must_be_a_boolean() {
        assert_eq!(
            Request::from_line(r#"{"cmd":"snapshot","dir":"d"}"#).expect("snapshot"),
            Request::Snapshot {
                dir: "d".into(),
                exit: false
            }
        );
        let text = |line: &str| Request::from_line(line).expect_err("refused").to_string();
        assert_eq!(
            text(r#"{"cmd":"snapshot"}"#),
            "bad arguments to 'snapshot': missing field `dir`"
        );
        assert_eq!(
            text(r#"{"cmd":"snapshot","dir":"d","exit":"yes"}"#),
            "bad arguments to 'snapshot': invalid type: string \"yes\", expected a boolean"
        );
    }

    /// What `from_line` gave when it handed the object to the derived `Deserialize`.
    fn derived_from_line(line: &str) -> Result<Request, String> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|e| RequestError::NotJson(e).to_string())?;
        let Some(cmd) = value.get("cmd").and_then(Value::as_str) else {
            return Err(RequestError::NoCommand.to_string());
        };
        let Some(known) = Request::COMMANDS.iter().find(|&&c| c == cmd) else {
            return Err(RequestError::UnknownCommand(cmd.to_string()).to_string());
        };
        Request::deserialize(&value)
            .map_err(|detail| RequestError::BadArguments { cmd: known, detail }.to_string())
    }

    #[test]
    fn from_line_agrees_with_the_derived_deserialize() {
        let mut lines: Vec<String> = Request::COMMANDS
            .iter()
            .flat_map(|cmd| {
                [
                    format!(r#"{{"cmd":"{cmd}"}}"#),
                    format!(r#" {{"id":7,"cmd":"{cmd}","data":"x","cmd":"{cmd}"}} "#),
                    format!(r#"{{"cmd":"{cmd}","dir":"/d","exit":false}}"#),
                    format!(r#"{{"cmd":"{cmd}","dir":"/d","exit":1}}"#),
                    format!(r#"{{"cmd":"{cmd}","dir":7}}"#),
                    format!(r#"{{"cmd":"{cmd}","dir":"/d","exit":null}}"#),
                    format!(r#"{{"cmd":"{cmd}","line":"x y"}}"#),
                    format!(r#"{{"cmd":"{cmd}","line":7}}"#),
                ]
            })
            .collect();
        let data = [
            r#""hi\n""#,
            r#""""#,
            "null",
            "true",
            "false",
            "0",
            "5",
            "-5",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "-0.0",
            "0.1",
            "1e-7",
            "1e300",
            "123456789012345678901234567890.5",
            "[]",
            r#"["x"]"#,
            "{}",
            r#"{"data":"x"}"#,
        ];
        for d in data {
            lines.push(format!(r#"{{"cmd":"console_input","data":{d}}}"#));
            lines.push(format!(
                r#"{{"data":"y","cmd":"console_input","data":{d}}}"#
            ));
        }
        lines.extend(
            [
                "",
                "not json",
                "{}",
                "[]",
                r#"{"cmd":null}"#,
                r#"{"cmd":"Status"}"#,
                r#"{"cmd":"bogus","data":1}"#,
                r#"{"cmd":"console_input","data":"x""#,
            ]
            .map(String::from),
        );
        for line in &lines {
            assert_eq!(
                Request::from_line(line).map_err(|e| e.to_string()),
                derived_from_line(line),
                "{line}"
            );
        }
    }

    #[test]
    fn replies_are_the_bytes_the_vmm_always_wrote() {
        crate::assert_pinned(pinned_replies(), Reply::to_line, Reply::from_line);
    }

    #[test]
    fn usage_and_status_read_from_an_ok_reply_object() {
        // What a client that only wants a few fields does (coinopd reads usage this way).
        let usage: Usage = serde_json::from_str(
            r#"{"mem_mib":64,"ok":true,"uptime_us":5,"vcpu_total_us":3,"vcpu_us":[3]}"#,
        )
        .expect("usage");
        assert_eq!(usage.vcpu_total_us, 3);
        let status: Status = serde_json::from_str(
            r#"{"mem_mib":64,"ok":true,"state":"paused","uptime_us":5,"vcpus":1}"#,
        )
        .expect("status");
        assert_eq!(status.state, VmState::Paused);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for line in [
            r#"{"ok":false}"#,
            r#"{"ok":true,"vcpu_total_us":1}"#,
            r#"{"ok":true,"vcpus":1,"mem_mib":1,"uptime_us":1}"#,
            r#"{"ok":true,"state":"sleeping"}"#,
            r#"{"state":"running"}"#,
        ] {
            assert!(Reply::from_line(line).is_err(), "{line}");
        }
    }
}
