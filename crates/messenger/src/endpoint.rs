//! Endpoint addresses: `tcp://HOST:PORT`, `ipc://PATH`, `inproc://NAME`.
//!
//! Parsing is total: every string yields an [`Endpoint`] or an error
//! ([`Error::InvalidEndpoint`](crate::Error::InvalidEndpoint)) that names
//! the problem and quotes the input, so a typo on a command line never
//! becomes a panic or a silent bind to the wrong place.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Why an endpoint string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EndpointError {
    /// The string has no `scheme://` prefix.
    #[error("endpoint {0:?} has no scheme: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")]
    MissingScheme(String),
    /// The scheme is not one of tcp, ipc, inproc.
    #[error("endpoint {0:?} has unknown scheme {1:?}: expected tcp, ipc or inproc")]
    UnknownScheme(String, String),
    /// A tcp endpoint without `:PORT`.
    #[error("tcp endpoint {0:?} has no port: expected tcp://HOST:PORT")]
    MissingPort(String),
    /// The port is not a number in 0..=65535.
    #[error("tcp endpoint {0:?} has port {1:?}, which is not a number in 0..=65535")]
    BadPort(String, String),
    /// A tcp endpoint with an empty host.
    #[error("tcp endpoint {0:?} has an empty host")]
    EmptyHost(String),
    /// `ipc://` with nothing after it.
    #[error("ipc endpoint {0:?} has an empty path")]
    EmptyPath(String),
    /// `inproc://` with nothing after it.
    #[error("inproc endpoint {0:?} has an empty name")]
    EmptyName(String),
    /// A NUL byte, which no path, host or name can hold (an ipc path with
    /// one failed only at bind or connect, as a bind error or a refusal).
    #[error("endpoint {0:?} contains a NUL byte")]
    Nul(String),
}

/// Where a listener binds or a connection connects, parsed from the
/// strings libzmq takes.
///
/// ```
/// use messenger::{Endpoint, ErrorKind};
///
/// let ep: Endpoint = "tcp://127.0.0.1:5555".parse().unwrap();
/// assert_eq!(ep.to_string(), "tcp://127.0.0.1:5555");
/// assert!("ipc:///tmp/model.sock".parse::<Endpoint>().is_ok());
/// let e = "tcp://localhost".parse::<Endpoint>().unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Invalid);
/// assert_eq!(
///     e.to_string(),
///     "tcp endpoint \"tcp://localhost\" has no port: expected tcp://HOST:PORT"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// TCP. `host` is `*` (all interfaces, bind only), an IP address
    /// (IPv6 without brackets) or a name to resolve.
    Tcp {
        /// Host part, brackets removed.
        host: String,
        /// Port; 0 asks the OS for a free one when binding.
        port: u16,
    },
    /// A Unix-domain socket at a filesystem path.
    Ipc(PathBuf),
    /// A name in this process's in-process registry.
    Inproc(String),
}

impl Endpoint {
    /// The scheme, for logs and errors.
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoint::Tcp { .. } => "tcp",
            Endpoint::Ipc(_) => "ipc",
            Endpoint::Inproc(_) => "inproc",
        }
    }
}

impl FromStr for Endpoint {
    type Err = crate::Error;

    /// Parses `s`; a string that is not an endpoint is
    /// [`Error::InvalidEndpoint`](crate::Error::InvalidEndpoint), saying
    /// what is wrong with it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map_err(|e| crate::Error::InvalidEndpoint(e.to_string()))
    }
}

/// Parses an endpoint, naming what is wrong with one that is not.
fn parse(s: &str) -> Result<Endpoint, EndpointError> {
    if s.contains('\0') {
        return Err(EndpointError::Nul(s.to_owned()));
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| EndpointError::MissingScheme(s.to_owned()))?;
    match scheme {
        "tcp" => parse_tcp(s, rest),
        "ipc" if rest.is_empty() => Err(EndpointError::EmptyPath(s.to_owned())),
        "ipc" => Ok(Endpoint::Ipc(PathBuf::from(rest))),
        "inproc" if rest.is_empty() => Err(EndpointError::EmptyName(s.to_owned())),
        "inproc" => Ok(Endpoint::Inproc(rest.to_owned())),
        other => Err(EndpointError::UnknownScheme(s.to_owned(), other.to_owned())),
    }
}

fn parse_tcp(whole: &str, rest: &str) -> Result<Endpoint, EndpointError> {
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| EndpointError::MissingPort(whole.to_owned()))?;
    // `[::1]:80`: the last colon separates the port; a bare `::1` has none we can trust.
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| EndpointError::MissingPort(whole.to_owned()))?,
        None if host.contains(':') => return Err(EndpointError::MissingPort(whole.to_owned())),
        None => host,
    };
    if host.is_empty() {
        return Err(EndpointError::EmptyHost(whole.to_owned()));
    }
    if port.is_empty() {
        return Err(EndpointError::MissingPort(whole.to_owned()));
    }
    // u16::from_str accepts a leading '+'; ports are digits only.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError::BadPort(whole.to_owned(), port.to_owned()));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| EndpointError::BadPort(whole.to_owned(), port.to_owned()))?;
    Ok(Endpoint::Tcp {
        host: host.to_owned(),
        port,
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Ipc(path) => write!(f, "ipc://{}", path.display()),
            Endpoint::Inproc(name) => write!(f, "inproc://{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            ok("tcp://127.0.0.1:5555"),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 5555
            }
        );
        assert_eq!(
            ok("tcp://*:0"),
            Endpoint::Tcp {
                host: "*".into(),
                port: 0
            }
        );
        assert_eq!(
            ok("tcp://localhost:65535"),
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 65535
            }
        );
        assert_eq!(
            ok("tcp://[::1]:9"),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(ok("ipc:///tmp/x.sock"), Endpoint::Ipc("/tmp/x.sock".into()));
        assert_eq!(ok("inproc://planner"), Endpoint::Inproc("planner".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tcp://127.0.0.1:5555",
            "tcp://[::1]:9",
            "ipc:///tmp/a b",
            "inproc://x",
        ] {
            assert_eq!(ok(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_strings_with_named_errors() {
        use EndpointError::*;
        type Check = fn(&EndpointError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("127.0.0.1:5", |e| matches!(e, MissingScheme(_))),
            (
                "udp://x:1",
                |e| matches!(e, UnknownScheme(_, s) if s == "udp"),
            ),
            ("tcp://host", |e| matches!(e, MissingPort(_))),
            ("tcp://host:", |e| matches!(e, MissingPort(_))),
            ("tcp://::1", |e| matches!(e, MissingPort(_))),
            ("tcp://h:65536", |e| matches!(e, BadPort(..))),
            ("tcp://h:+80", |e| matches!(e, BadPort(..))),
            ("tcp://h:-1", |e| matches!(e, BadPort(..))),
            ("tcp://h:8x", |e| matches!(e, BadPort(..))),
            ("tcp://:80", |e| matches!(e, EmptyHost(_))),
            ("ipc://", |e| matches!(e, EmptyPath(_))),
            ("inproc://", |e| matches!(e, EmptyName(_))),
            ("ipc:///tmp/a\0b", |e| matches!(e, Nul(_))),
            ("tcp://h\0st:80", |e| matches!(e, Nul(_))),
            ("inproc://a\0", |e| matches!(e, Nul(_))),
        ];
        for (s, check) in cases {
            let err = parse(s).expect_err(s);
            assert!(check(&err), "{s}: wrong error {err:?}");
            assert!(
                err.to_string().contains(&format!("{s:?}")),
                "error should quote the input: {err}"
            );
        }
    }
}
