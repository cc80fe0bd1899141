//! Python values to the library's types and back: endpoints, seconds,
//! configuration keywords, the counters.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use messenger::curve::PublicKey;
use messenger::{Config, Curve, Endpoint, Heartbeat, Secret, StatsSnapshot};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::{OrRaise, invalid};
use crate::keys::{CurveSettings, KeyPair};

/// Parses an endpoint string; a bad one is a `ValueError` with the
/// library's message (the command line's).
pub(crate) fn endpoint(py: Python<'_>, s: &str) -> PyResult<Endpoint> {
    s.parse::<Endpoint>().or_raise(py)
}

/// Seconds (an int or a float, finite and not negative) as a duration.
pub(crate) fn seconds(py: Python<'_>, what: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    // A bool is an int to Python: `timeout=True` is a mistake, not 1 s.
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a number of seconds"
        )));
    }
    let s: f64 = value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a number of seconds")))?;
    Duration::try_from_secs_f64(s).map_err(|_| {
        invalid(
            py,
            format!("{what} must be a finite, non-negative number of seconds, got {s}"),
        )
    })
}

/// A config field's name as the library's errors write it.
fn field(name: &str) -> String {
    format!("invalid configuration: Config::{name}")
}

/// A count (a non-negative int).
fn count<T: for<'a, 'py> FromPyObject<'a, 'py>>(
    py: Python<'_>,
    name: &str,
    value: &Bound<'_, PyAny>,
) -> PyResult<T> {
    // A bool is an int to Python: `max_frames=True` is a mistake, not 1.
    if !value.is_instance_of::<pyo3::types::PyInt>()
        || value.is_instance_of::<pyo3::types::PyBool>()
    {
        return Err(PyTypeError::new_err(format!(
            "{} must be an int",
            field(name)
        )));
    }
    value.extract::<T>().map_err(|_| {
        invalid(
            py,
            format!("{} must be a non-negative int that fits", field(name)),
        )
    })
}

/// Seconds, or `None` for "off".
fn optional_seconds(
    py: Python<'_>,
    name: &str,
    value: &Bound<'_, PyAny>,
) -> PyResult<Option<Duration>> {
    if value.is_none() {
        return Ok(None);
    }
    seconds(py, &field(name), value).map(Some)
}

/// `heartbeat`: `None` (off) or `(interval, timeout, ttl)` in seconds.
fn heartbeat(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Option<Heartbeat>> {
    if value.is_none() {
        return Ok(None);
    }
    let parts: (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
        value.extract().map_err(|_| {
            PyTypeError::new_err("heartbeat must be None or (interval, timeout, ttl) in seconds")
        })?;
    Ok(Some(Heartbeat {
        interval: seconds(py, "heartbeat interval", &parts.0)?,
        timeout: seconds(py, "heartbeat timeout", &parts.1)?,
        ttl: seconds(py, "heartbeat ttl", &parts.2)?,
    }))
}

/// The configuration keywords a `Messenger` takes: every [`Config`] field
/// by its name (seconds for durations, `None` for what may be off), with
/// `secret` (bytes) for `auth` and `curve` (a `Curve`).
pub(crate) fn config(py: Python<'_>, keywords: Option<&Bound<'_, PyDict>>) -> PyResult<Config> {
    let mut c = Config::default();
    let Some(keywords) = keywords else {
        return Ok(c);
    };
    for (key, value) in keywords.iter() {
        let key = key.cast_into::<PyString>()?;
        let name = key.to_cow()?;
        let name: &str = &name;
        let v = &value;
        match name {
            "request_timeout" => c.request_timeout = seconds(py, &field(name), v)?,
            "max_pending_callbacks" => c.max_pending_callbacks = count(py, name, v)?,
            "send_queue_capacity" => c.send_queue_capacity = count(py, name, v)?,
            "send_window_bytes" => c.send_window_bytes = count(py, name, v)?,
            "send_buffer_size" => c.send_buffer_size = count(py, name, v)?,
            "slc_queue_capacity" => c.slc_queue_capacity = count(py, name, v)?,
            "max_message_size" => c.max_message_size = count(py, name, v)?,
            "max_frames" => c.max_frames = count(py, name, v)?,
            "max_command_size" => c.max_command_size = count(py, name, v)?,
            "message_timeout" => c.message_timeout = seconds(py, &field(name), v)?,
            "min_receive_rate" => c.min_receive_rate = count(py, name, v)?,
            "max_partial_bytes" => c.max_partial_bytes = count(py, name, v)?,
            "heartbeat" => c.heartbeat = heartbeat(py, v)?,
            "handshake_timeout" => c.handshake_timeout = seconds(py, &field(name), v)?,
            "max_connections_per_listener" => c.max_connections_per_listener = count(py, name, v)?,
            "evict_idle_after" => c.evict_idle_after = optional_seconds(py, name, v)?,
            "max_connections_per_address" => c.max_connections_per_address = count(py, name, v)?,
            "connect_timeout" => c.connect_timeout = seconds(py, &field(name), v)?,
            "resend_interval" => c.resend_interval = optional_seconds(py, name, v)?,
            "max_pending_messages" => c.max_pending_messages = count(py, name, v)?,
            "dedup_window" => c.dedup_window = count(py, name, v)?,
            "reconnect_initial" => c.reconnect_initial = seconds(py, &field(name), v)?,
            "reconnect_max" => c.reconnect_max = seconds(py, &field(name), v)?,
            "max_concurrent_handlers" => c.max_concurrent_handlers = count(py, name, v)?,
            "shutdown_grace" => c.shutdown_grace = seconds(py, &field(name), v)?,
            "linger" => c.linger = seconds(py, &field(name), v)?,
            "secret" => {
                c.auth = if v.is_none() {
                    None
                } else {
                    let bytes: Vec<u8> = v
                        .extract::<pyo3::pybacked::PyBackedBytes>()
                        .map_err(|_| PyTypeError::new_err("secret must be bytes or None"))?
                        .to_vec();
                    Some(Secret::new(bytes))
                }
            }
            "curve" => {
                c.curve = if v.is_none() {
                    None
                } else {
                    let settings = v.cast::<CurveSettings>().map_err(|_| {
                        PyTypeError::new_err("curve must be a messenger.Curve or None")
                    })?;
                    Some(settings.get().to_curve())
                }
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "Messenger() got an unexpected keyword argument {other:?} \
                     (the keywords are Config's fields, and secret and curve)"
                )));
            }
        }
    }
    Ok(c)
}

/// A public key from its 40 Z85 characters.
pub(crate) fn public_key(py: Python<'_>, z85: &str) -> PyResult<PublicKey> {
    PublicKey::from_z85(z85.trim()).map_err(|e| invalid(py, format!("not a Z85 public key: {e}")))
}

/// The library's CURVE settings from the Python-side pieces.
pub(crate) fn curve(
    keys: &KeyPair,
    server: Option<PublicKey>,
    allow: Option<Vec<PublicKey>>,
) -> Curve {
    Curve {
        keys: keys.pair.clone(),
        server_key: server,
        allow: allow.map(|keys| Arc::new(keys.into_iter().collect::<HashSet<_>>())),
    }
}

/// The counters as a dict of ints, with the binding's own.
pub(crate) fn stats<'py>(
    py: Python<'py>,
    snapshot: &StatsSnapshot,
    extra: &[(&str, u64)],
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(snapshot) {
        for (k, v) in map {
            if let Some(n) = v.as_u64() {
                dict.set_item(k, n)?;
            }
        }
    }
    for (k, v) in extra {
        dict.set_item(*k, *v)?;
    }
    Ok(dict)
}
