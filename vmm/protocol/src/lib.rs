//! The wire formats of coinop-vmm's process boundary, defined once for the VMM that writes
//! them and for every program that reads them (coinopd, the benchmark harness, tests).
//!
//! coinop-vmm talks to its parent on two JSON-lines channels, one JSON object per line:
//!
//! - the **event stream** ([`Event`]): what happened to the guest and when (`vm_created`,
//!   `vcpus_started`, `awaiting_personalisation`, `personalised`, `guest_ready`, `warning`,
//!   and last `exit` with its [`ExitReason`], process exit code and, for a guest crash,
//!   the crashed vCPU's registers as a [`VcpuDump`]), on stderr or an inherited fd;
//! - the **control socket**: a client sends a [`Request`] (`status`, `pause`, `resume`,
//!   `usage`, `console_input`, `stop`, `snapshot`, `personalise`) and gets one [`Reply`]
//!   back: a [`Status`], a [`Usage`], the [`VmState`] the guest is now asked to be in, a bare
//!   acknowledgement, or an error text. A request the VMM cannot read is refused with the
//!   [`RequestError`]'s text.
//!
//! The enums here are the whole vocabulary; the `vmm` crate's top-level docs describe what
//! each message means for a guest. [`Event`], [`Request`] and [`Reply`] have `to_line` and
//! `from_line` for the framing: one compact JSON object, then `\n`.
//!
//! # Byte order on the wire
//! Serializing a message gives the same bytes coinop-vmm wrote before this crate existed:
//! events lead with `event` and `t_us`, and every other key follows in alphabetical order
//! (what `serde_json`'s sorted maps produced then). Readers should not depend on key order;
//! it is kept so that logs and recorded streams stay comparable byte for byte.
//!
//! With the feature `client`, [`client`] is the async control-socket client coinopd and the
//! benchmark harness share.
//!
//! Parsing ignores fields it does not know, as the VMM and its readers always have, so a
//! reader built against this crate keeps working when a message gains a field.

#[cfg(feature = "client")]
pub mod client;
mod control;
mod events;
mod vcpu_dump;

pub use control::{Reply, ReplyError, Request, RequestError, Status, Usage, VmState};
pub use events::{Event, ExitReason};
pub use vcpu_dump::{
    DescriptorTable, ExceptionState, Hex, InterruptState, NmiState, Segment, VcpuDump,
};

/// One message as a line: compact JSON and a newline.
fn to_line<T: serde::Serialize>(message: &T) -> String {
    // The messages are plain structs and enums with string keys and no fallible
    // `Serialize` impl, so serde_json has nothing it could fail on.
    let mut line = serde_json::to_string(message).expect("wire messages always serialize");
    line.push('\n');
    line
}

/// Asserts that each message serializes to exactly its pinned line and parses back, from
/// that line and from its own output.
#[cfg(test)]
fn assert_pinned<T, E>(
    pinned: Vec<(&str, T)>,
    to_line: fn(&T) -> String,
    from_line: fn(&str) -> Result<T, E>,
) where
    T: PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    for (line, message) in pinned {
        assert_eq!(to_line(&message), format!("{line}\n"));
        assert_eq!(from_line(line).expect(line), message);
        assert_eq!(from_line(&to_line(&message)).expect(line), message);
    }
}
