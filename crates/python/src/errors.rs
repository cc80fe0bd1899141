//! The one place a [`messenger::Error`] becomes a Python exception.
//!
//! The classes are defined in Python (`messenger/_errors.py`), where a
//! class may have two bases (`Timeout` is also a `TimeoutError`) and its
//! docstring reads as Python; this maps each [`ErrorKind`] to one of them
//! by name, with the library's message unchanged (the command line prints
//! the same text).

use messenger::{Error, ErrorKind};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyType};

/// `messenger._errors`, imported once.
static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class called `name` in `messenger._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module =
        ERRORS.get_or_try_init(py, || py.import("messenger._errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// The Python class of each kind of failure.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "Timeout",
        ErrorKind::Disconnected => "Disconnected",
        ErrorKind::Refused => "Refused",
        ErrorKind::Shutdown => "Shutdown",
        ErrorKind::TooLarge => "TooLarge",
        ErrorKind::Full => "Full",
        ErrorKind::Bind => "BindError",
        ErrorKind::Invalid => "InvalidArgument",
        // ErrorKind is non-exhaustive: a kind added later is still a
        // MessengerError.
        _ => "MessengerError",
    }
}

/// `e` as an exception of its kind's class, carrying its message.
pub(crate) fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    raise(py, class_name(e.kind()), e.to_string())
}

/// An exception of class `name` (of `messenger._errors`) saying `message`.
pub(crate) fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    match class(py, name) {
        Ok(cls) => PyErr::from_type(cls, (message,)),
        // The package is broken (the module is missing): say so rather
        // than lose the original message.
        Err(import) => import,
    }
}

/// A value a caller passed that cannot be used (`ValueError`, as
/// `InvalidArgument`).
pub(crate) fn invalid(py: Python<'_>, message: String) -> PyErr {
    raise(py, "InvalidArgument", message)
}

/// `e` as an exception object, for callbacks that receive failures as
/// values.
pub(crate) fn to_value(py: Python<'_>, e: &Error) -> Py<PyAny> {
    to_py(py, e).into_value(py).into_any()
}

/// Converts a library result, mapping the error.
pub(crate) trait OrRaise<T> {
    /// The value, or the error as its Python exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e))
    }
}
