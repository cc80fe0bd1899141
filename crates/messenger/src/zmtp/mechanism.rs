//! Security mechanisms: the seam the greeting chooses (RFC 37,
//! "Authentication and Confidentiality"). NULL is here; CURVE (RFC 26)
//! plugs in as another variant of [`Mechanism`] with its own handshake
//! commands and an [`Encoder`](super::Encoder) / receive side that wrap
//! every frame in a MESSAGE command.
//!
//! NULL (RFC 37, "The NULL Security Mechanism"): the client (the peer that
//! connects) sends READY and waits for READY; the server reads and
//! validates the client's READY, then answers READY, or ERROR and closes.

use std::fmt;

use bytes::Bytes;

use super::command::{Command, Metadata, error_body};
use super::{Role, ZmtpError};

/// A mechanism name as the greeting carries it: 20 octets, null padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MechanismName([u8; 20]);

impl MechanismName {
    /// No security.
    pub const NULL: MechanismName = MechanismName::new(b"NULL");
    /// CurveZMQ (RFC 26), next to come.
    pub const CURVE: MechanismName = MechanismName::new(b"CURVE");

    const fn new(name: &[u8]) -> Self {
        let mut padded = [0u8; 20];
        let mut i = 0;
        while i < name.len() {
            padded[i] = name[i];
            i += 1;
        }
        MechanismName(padded)
    }

    /// Reads a name from the greeting: 1 to 20 of `A-Z 0-9 - _ . +`, then
    /// zeros only.
    pub fn from_padded(padded: [u8; 20]) -> Option<Self> {
        let len = padded.iter().position(|&b| b == 0).unwrap_or(20);
        let (name, rest) = padded.split_at(len);
        let valid = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.+".contains(b);
        (len > 0 && name.iter().all(valid) && rest.iter().all(|&b| b == 0))
            .then_some(MechanismName(padded))
    }

    /// The 20 octets as sent.
    pub fn as_padded(&self) -> &[u8; 20] {
        &self.0
    }

    /// The name without padding.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(20);
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl fmt::Debug for MechanismName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MechanismName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a mechanism's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NullState {
    /// Waiting for the peer's READY (or ERROR).
    AwaitReady,
    /// The peer's READY is in and validated by the mechanism; the socket
    /// layer has still to accept (server: our READY goes out then).
    PeerReady,
    /// Both READYs exchanged.
    Done,
    /// ERROR sent or received.
    Failed,
}

/// What a handshake command did.
#[derive(Debug)]
pub(crate) enum Step {
    /// The peer's metadata is in: the socket layer accepts or refuses.
    PeerReady(Metadata),
}

/// The mechanism a connection speaks, chosen by configuration and checked
/// against the peer's greeting.
#[derive(Debug)]
pub(crate) enum Mechanism {
    Null { role: Role, state: NullState },
}

impl Mechanism {
    pub(crate) fn null(role: Role) -> Self {
        Mechanism::Null {
            role,
            state: NullState::AwaitReady,
        }
    }

    pub(crate) fn name(&self) -> MechanismName {
        match self {
            Mechanism::Null { .. } => MechanismName::NULL,
        }
    }

    /// The greeting's as-server flag: NULL has no roles, so it is 0.
    pub(crate) fn as_server(&self) -> bool {
        match self {
            Mechanism::Null { .. } => false,
        }
    }

    /// The commands to send once the greetings are exchanged: a NULL
    /// client's READY goes first.
    pub(crate) fn start(&mut self, ready: &Bytes, send: &mut dyn FnMut(&[u8])) {
        match self {
            Mechanism::Null { role, .. } => {
                if *role == Role::Client {
                    send(ready);
                }
            }
        }
    }

    /// A command during the handshake.
    pub(crate) fn on_command(&mut self, body: Bytes) -> Result<Step, ZmtpError> {
        match self {
            Mechanism::Null { state, .. } => {
                if *state != NullState::AwaitReady {
                    return Err(ZmtpError::UnexpectedCommand);
                }
                match Command::parse(body)? {
                    Command::Ready(data) => {
                        let metadata = Metadata::parse(&data)?;
                        *state = NullState::PeerReady;
                        Ok(Step::PeerReady(metadata))
                    }
                    Command::Error(reason) => {
                        *state = NullState::Failed;
                        Err(ZmtpError::PeerError {
                            reason: String::from_utf8_lossy(&reason).into_owned(),
                        })
                    }
                    _ => Err(ZmtpError::UnexpectedCommand),
                }
            }
        }
    }

    /// The socket layer accepts the peer: the server's READY goes out.
    pub(crate) fn accept(&mut self, ready: &Bytes, send: &mut dyn FnMut(&[u8])) {
        match self {
            Mechanism::Null { role, state } => {
                if *state == NullState::PeerReady {
                    if *role == Role::Server {
                        send(ready);
                    }
                    *state = NullState::Done;
                }
            }
        }
    }

    /// Refuses the peer: ERROR, if the handshake still allows one.
    pub(crate) fn refuse(&mut self, reason: &str, send: &mut dyn FnMut(&[u8])) {
        match self {
            Mechanism::Null { state, .. } => {
                if matches!(state, NullState::AwaitReady | NullState::PeerReady) {
                    send(&error_body(reason));
                }
                *state = NullState::Failed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(MechanismName::NULL.as_str(), "NULL");
        let mut p = [0u8; 20];
        p[..5].copy_from_slice(b"CURVE");
        assert_eq!(MechanismName::from_padded(p), Some(MechanismName::CURVE));
        p[6] = b'X';
        assert_eq!(MechanismName::from_padded(p), None, "name after padding");
        assert_eq!(MechanismName::from_padded([0; 20]), None, "empty");
        assert!(MechanismName::from_padded(*b"ABCDEFGHIJ0123456789").is_some());
    }
}
