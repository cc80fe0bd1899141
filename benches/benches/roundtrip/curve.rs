//! Keys for the CURVE cells. Fixed, so the parent's clients and a child
//! server agree without passing secrets around: this is a benchmark, and
//! nothing it protects is secret.

use std::io::Write;

use messenger::{CurveKeyPair, CurvePublicKey, CurveSecretKey};

/// The servers' pair (libzmq-curve, and `messenger serve --curve-cert`).
pub fn server_keys() -> CurveKeyPair {
    CurveKeyPair::from_secret(CurveSecretKey::from_bytes([0x5e; 32]))
}

/// What a CURVE client needs: its own pair and the server's public key.
#[cfg_attr(not(feature = "compare"), allow(dead_code))]
pub struct ClientKeys {
    /// The client's permanent pair.
    pub keys: CurveKeyPair,
    /// The server's public key.
    pub server: CurvePublicKey,
}

/// The clients' pair.
#[cfg_attr(not(feature = "compare"), allow(dead_code))]
pub fn client_keys() -> ClientKeys {
    ClientKeys {
        keys: CurveKeyPair::from_secret(CurveSecretKey::from_bytes([0xc1; 32])),
        server: *server_keys().public(),
    }
}

/// The server's pair as a CZMQ certificate file, for `--curve-cert`.
pub fn server_cert() -> tempfile::NamedTempFile {
    let keys = server_keys();
    let mut file = tempfile::NamedTempFile::new().expect("cert file");
    let text = format!(
        "curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
        keys.public().to_z85(),
        &*keys.secret().to_z85()
    );
    file.write_all(text.as_bytes()).expect("write cert");
    file
}
