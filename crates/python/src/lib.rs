//! `messenger._messenger`: the native module of the Python package
//! `messenger` (python/), over the messenger library (crates/messenger).
//!
//! A thin layer, as pydantic-core and polars are: it converts types
//! (`convert.rs`, `types.rs`, `keys.rs`), maps the library's one error to
//! Python exceptions in one place (`errors.rs`), and carries work between
//! the tokio runtime and Python without either waiting on the other: the
//! blocking API waits with the GIL released (`runtime.rs`, `blocking.rs`),
//! its server loops and callbacks run on the package's own named threads
//! (`threads.rs`), and the asyncio API resolves futures on the loop's
//! thread (`aio.rs`). The
//! protocol, the delivery guarantees and CURVE are the library's; nothing
//! here reimplements them. design/ARCHITECTURE.md, "The Python binding",
//! draws where the GIL is taken and released.

mod aio;
mod blocking;
mod convert;
mod core;
mod errors;
mod keys;
mod runtime;
mod threads;
mod types;

use pyo3::prelude::*;

/// The native module; `messenger/__init__.py` and `messenger/aio.py`
/// re-export what users see.
#[pymodule]
fn _messenger(m: &Bound<'_, PyModule>) -> PyResult<()> {
    runtime::watch_forks();
    m.add_class::<core::MessengerBase>()?;
    m.add_class::<blocking::Messenger>()?;
    m.add_class::<blocking::Responder>()?;
    // Named apart here (both are "Messenger" and "Responder" to Python);
    // messenger/aio.py gives them their names.
    let py = m.py();
    m.add("AsyncMessenger", py.get_type::<aio::AsyncMessenger>())?;
    m.add("AsyncResponder", py.get_type::<aio::Responder>())?;
    m.add("RequestFuture", py.get_type::<aio::RequestFuture>())?;
    m.add_class::<types::Incoming>()?;
    m.add_class::<types::ResponderBase>()?;
    m.add_class::<types::Connection>()?;
    m.add_class::<types::Peer>()?;
    m.add_class::<keys::KeyPair>()?;
    m.add_class::<keys::CurveSettings>()?;
    m.add_class::<threads::WorkQueue>()?;
    m.add_function(wrap_pyfunction!(runtime::settle_threads, m)?)?;
    m.add("NOOP", messenger::NOOP)?;
    m.add("ECHO", messenger::ECHO)?;
    m.add("ACK", messenger::ACK)?;
    m.add("FIRST_USER", messenger::FIRST_USER)?;
    Ok(())
}
