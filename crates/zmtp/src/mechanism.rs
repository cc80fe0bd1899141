//! Security mechanisms: the seam the greeting chooses (RFC 37,
//! "Authentication and Confidentiality"). NULL is here; CURVE (RFC 26)
//! is in `curve.rs`: its handshake commands run here, and once accepted
//! its session goes to the [`Encoder`](super::Encoder) and
//! [`FrameDecoder`](super::FrameDecoder), which box and unbox every frame
//! in a MESSAGE.
//!
//! NULL (RFC 37, "The NULL Security Mechanism"): the client (the peer that
//! connects) sends READY and waits for READY; the server reads and
//! validates the client's READY, then answers READY, or ERROR and closes.

use bytes::Bytes;

use super::command::{Command, Metadata, error_body};
use super::curve::{CurveClient, CurveServer, Progress, Session};
use super::greeting::Greeting;
pub use super::greeting::MechanismName;
use super::keys::{CurveKeyPair, CurvePublicKey};
use super::{Role, ZmtpError};

/// Where a NULL handshake stands.
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
    /// The handshake goes on (a reply may have been sent).
    Continue,
    /// The peer's metadata is in: the socket layer accepts or refuses.
    PeerReady {
        /// The peer's READY (NULL) or INITIATE/READY (CURVE) metadata.
        metadata: Metadata,
        /// CURVE: the peer's permanent public key, proven by the handshake.
        curve_key: Option<CurvePublicKey>,
    },
}

/// Which mechanism a connection speaks and, for CURVE, with which keys.
/// Part of [`EngineConfig`](super::EngineConfig); NULL by default.
///
/// CURVE's roles are its own: the CURVE server may be the side that
/// connects or the one that accepts (libzmq's `ZMQ_CURVE_SERVER`), and the
/// greeting's as-server flag says which it is.
#[derive(Debug, Clone, Default)]
pub enum MechanismConfig {
    /// No security (RFC 37): metadata in clear, no authentication.
    #[default]
    Null,
    /// CURVE server (RFC 26): proves `keys` to clients, who must know its
    /// public half; each client's permanent key is reported in
    /// [`PeerInfo::curve_public_key`](super::PeerInfo::curve_public_key)
    /// for the socket layer to authorise.
    CurveServer {
        /// Our permanent key pair.
        keys: CurveKeyPair,
    },
    /// CURVE client (RFC 26): connects only to the server holding the
    /// secret half of `server_key`, and proves `keys` to it.
    CurveClient {
        /// Our permanent key pair.
        keys: CurveKeyPair,
        /// The server's permanent public key, known beforehand.
        server_key: CurvePublicKey,
    },
}

/// The mechanism a connection speaks, chosen by configuration and checked
/// against the peer's greeting.
#[derive(Debug)]
pub(crate) enum Mechanism {
    /// NULL: `role` decides who sends READY first.
    Null { role: Role, state: NullState },
    /// CURVE client (boxed: its keys and handshake state are large).
    CurveClient(Box<CurveClient>),
    /// CURVE server.
    CurveServer(Box<CurveServer>),
}

/// The READY body's name, which CURVE's metadata goes without.
const READY_NAME_LEN: usize = 6;

impl Mechanism {
    /// The mechanism `config` names; `role` matters to NULL only.
    pub(crate) fn new(config: &MechanismConfig, role: Role) -> Self {
        match config {
            MechanismConfig::Null => Mechanism::Null {
                role,
                state: NullState::AwaitReady,
            },
            MechanismConfig::CurveServer { keys } => {
                Mechanism::CurveServer(Box::new(CurveServer::new(keys.clone())))
            }
            MechanismConfig::CurveClient { keys, server_key } => {
                Mechanism::CurveClient(Box::new(CurveClient::new(keys.clone(), *server_key)))
            }
        }
    }

    pub(crate) fn name(&self) -> MechanismName {
        match self {
            Mechanism::Null { .. } => MechanismName::NULL,
            Mechanism::CurveClient(_) | Mechanism::CurveServer(_) => MechanismName::CURVE,
        }
    }

    /// The greeting's as-server flag: NULL has no roles, so it is 0; the
    /// CURVE server sends 1 (RFC 25; libzmq sends 0 and ignores it).
    pub(crate) fn as_server(&self) -> bool {
        matches!(self, Mechanism::CurveServer(_))
    }

    /// Checks the peer's greeting beyond its mechanism name: CURVE needs
    /// one server and one client. libzmq never sets as-server (it sends 32
    /// zero octets after the mechanism, CURVE server or not), so a 0 proves
    /// nothing; only a peer that says it is a server too is refused.
    pub(crate) fn check_peer(&self, peer: &Greeting) -> Result<(), ZmtpError> {
        match self {
            Mechanism::CurveServer(_) if peer.as_server => {
                Err(ZmtpError::Greeting("both peers are CURVE servers"))
            }
            _ => Ok(()),
        }
    }

    /// The commands to send once the greetings are exchanged: a NULL
    /// client's READY, a CURVE client's HELLO.
    pub(crate) fn start(
        &mut self,
        ready: &Bytes,
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ZmtpError> {
        match self {
            Mechanism::Null { role, .. } => {
                if *role == Role::Client {
                    send(ready);
                }
                Ok(())
            }
            Mechanism::CurveClient(c) => c.start(send),
            Mechanism::CurveServer(_) => Ok(()),
        }
    }

    /// A command during the handshake; replies go to `send`.
    pub(crate) fn on_command(
        &mut self,
        body: Bytes,
        ready: &Bytes,
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<Step, ZmtpError> {
        let curve = |p: Progress| match p {
            Progress::Continue => Step::Continue,
            Progress::PeerReady(metadata, key) => Step::PeerReady {
                metadata,
                curve_key: Some(key),
            },
        };
        match self {
            Mechanism::Null { state, .. } => {
                if *state != NullState::AwaitReady {
                    return Err(ZmtpError::UnexpectedCommand);
                }
                match Command::parse(body)? {
                    Command::Ready(data) => {
                        let metadata = Metadata::parse(&data)?;
                        *state = NullState::PeerReady;
                        Ok(Step::PeerReady {
                            metadata,
                            curve_key: None,
                        })
                    }
                    Command::Error(reason) => {
                        *state = NullState::Failed;
                        Err(ZmtpError::peer_error(&reason))
                    }
                    _ => Err(ZmtpError::UnexpectedCommand),
                }
            }
            Mechanism::CurveClient(c) => c
                .on_command(body, ready.get(READY_NAME_LEN..).unwrap_or_default(), send)
                .map(curve),
            Mechanism::CurveServer(s) => s.on_command(body, send).map(curve),
        }
    }

    /// The socket layer accepts the peer: a NULL or CURVE server's READY
    /// goes out. CURVE hands back its session for the encoder and decoder.
    pub(crate) fn accept(
        &mut self,
        ready: &Bytes,
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<Session>, ZmtpError> {
        match self {
            Mechanism::Null { role, state } => {
                if *state == NullState::PeerReady {
                    if *role == Role::Server {
                        send(ready);
                    }
                    *state = NullState::Done;
                }
                Ok(None)
            }
            Mechanism::CurveClient(c) => c.accept(),
            Mechanism::CurveServer(s) => {
                s.accept(ready.get(READY_NAME_LEN..).unwrap_or_default(), send)
            }
        }
    }

    /// Refuses the peer: ERROR, if the handshake still allows one (never
    /// from a CURVE client, which RFC 26 forbids).
    pub(crate) fn refuse(&mut self, reason: &str, send: &mut dyn FnMut(&[u8])) {
        match self {
            Mechanism::Null { state, .. } => {
                if matches!(state, NullState::AwaitReady | NullState::PeerReady) {
                    send(&error_body(reason));
                }
                *state = NullState::Failed;
            }
            Mechanism::CurveClient(c) => c.refuse(),
            Mechanism::CurveServer(s) => s.refuse(reason, send),
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
