//! CURVE keys and settings as Python objects. The certificate files
//! (CZMQ's format, as `messenger keygen` writes them) are read and written
//! by `messenger/_certs.py`; the keys themselves (Z85, deriving the public
//! half, generating) are the library's.

use messenger::curve::{KeyPair as RustKeyPair, PublicKey, SecretKey};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::convert;
use crate::errors::invalid;

/// A CURVE key pair: a messenger's permanent identity under CURVE.
///
/// Make one with ``KeyPair.generate()``, ``KeyPair.from_secret(z85)`` or
/// from a certificate file (``messenger.load_certificate``). Its ``repr``
/// shows the public key only.
#[pyclass(frozen, module = "messenger", name = "KeyPair")]
pub(crate) struct KeyPair {
    /// The library's pair.
    pub(crate) pair: RustKeyPair,
}

#[pymethods]
impl KeyPair {
    /// A new random key pair, from the operating system's randomness.
    #[staticmethod]
    fn generate(py: Python<'_>) -> PyResult<Self> {
        RustKeyPair::generate()
            .map(|pair| KeyPair { pair })
            .map_err(|e| invalid(py, format!("cannot make a key pair: {e}")))
    }

    /// The pair of a secret key given as 40 Z85 characters (the public
    /// half is derived from it).
    #[staticmethod]
    fn from_secret(py: Python<'_>, secret: &str) -> PyResult<Self> {
        let secret = SecretKey::from_z85(secret.trim())
            .map_err(|e| invalid(py, format!("not a Z85 secret key: {e}")))?;
        Ok(KeyPair {
            pair: RustKeyPair::from_secret(secret),
        })
    }

    /// The public key, 40 Z85 characters: what peers are given.
    #[getter]
    fn public(&self) -> String {
        self.pair.public().to_z85()
    }

    /// The secret key, 40 Z85 characters. A method, not an attribute, so
    /// that it is never shown by accident; keep it out of logs.
    fn secret_z85(&self) -> String {
        self.pair.secret().to_z85().as_str().to_owned()
    }

    fn __repr__(&self) -> String {
        format!("KeyPair(public={:?})", self.pair.public().to_z85())
    }
}

/// CURVE settings for a ``Messenger(curve=...)``: the messenger's key
/// pair; for its connections, the server's public key (CURVE is spoken to
/// servers only when it is given); for its listeners, the clients let in
/// (their public keys; ``None`` lets in any client with a key pair).
#[pyclass(frozen, module = "messenger", name = "Curve")]
pub(crate) struct CurveSettings {
    /// Our pair.
    keys: Py<KeyPair>,
    /// The server's key, for connections.
    server_key: Option<PublicKey>,
    /// The allow-list, for listeners.
    allow: Option<Vec<PublicKey>>,
}

/// The keys of an allow list: any iterable of Z85 public keys (a list, a
/// set, a generator), but not one key given as a str, whose characters
/// would each be read as a key.
fn allow_list(py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<PublicKey>> {
    if keys.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "allow must be an iterable of Z85 public keys, not one key (give [key])",
        ));
    }
    keys.try_iter()?
        .map(|k| convert::public_key(py, &k?.extract::<String>()?))
        .collect()
}

#[pymethods]
impl CurveSettings {
    /// ``keys``: a ``KeyPair``; ``server_key``: the server's public key
    /// (Z85) for connections; ``allow``: the clients' public keys (Z85)
    /// a listener admits.
    #[new]
    #[pyo3(signature = (keys, server_key = None, allow = None))]
    fn new(
        py: Python<'_>,
        keys: Py<KeyPair>,
        server_key: Option<&str>,
        allow: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let server_key = server_key.map(|k| convert::public_key(py, k)).transpose()?;
        let allow = allow.map(|keys| allow_list(py, &keys)).transpose()?;
        if allow.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                py,
                "an empty allow list would refuse every client (give None to admit any)".into(),
            ));
        }
        Ok(CurveSettings {
            keys,
            server_key,
            allow,
        })
    }

    /// The key pair.
    #[getter]
    fn keys(&self, py: Python<'_>) -> Py<KeyPair> {
        self.keys.clone_ref(py)
    }

    /// The server's public key, if given.
    #[getter]
    fn server_key(&self) -> Option<String> {
        self.server_key.map(|k| k.to_z85())
    }

    /// The admitted clients' public keys, if an allow list was given.
    #[getter]
    fn allow(&self) -> Option<Vec<String>> {
        self.allow
            .as_ref()
            .map(|keys| keys.iter().map(PublicKey::to_z85).collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "Curve(keys=KeyPair(public={:?}), server_key={:?}, allow={})",
            self.keys.get().pair.public().to_z85(),
            self.server_key.map(|k| k.to_z85()),
            self.allow
                .as_ref()
                .map_or("None".to_owned(), |a| format!("[{} keys]", a.len()))
        )
    }
}

impl CurveSettings {
    /// The library's settings.
    pub(crate) fn to_curve(&self) -> messenger::Curve {
        convert::curve(self.keys.get(), self.server_key, self.allow.clone())
    }
}
