//! The Python package (python/, over crates/python): built into a venv
//! under `target/` exactly as a user installs it (`pip install ./python`,
//! maturin as the PEP 517 backend), then its pytest suite (python/tests)
//! run against this package's `messenger` command, and the Rust
//! model-server manager driving examples/python/model_server.py.
//!
//! - The venv is `target/pyenv-messenger` (pytest, pyzmq, msgpack and
//!   maturin from PyPI, once). The package is built with the `dev` profile
//!   into `target/python-build` (its own target directory: it builds while
//!   this test's `cargo test` may hold the workspace's), and only when its
//!   sources changed: a hash of them is kept in the venv, so a repeated
//!   `cargo test` does not rebuild it.
//! - Without python3, PyPI or a build that works, the tests print
//!   `SKIPPED: <why>` and pass, unless `CI` is set, in which case they
//!   fail.
//! - Every wait is bounded; a child still running at its bound is killed
//!   with its whole process group.
//!
//! `python benches/python/roundtrip.py` measures the package (not here:
//! benchmarks are never timed tests).

mod common;

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Ran, python};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_messenger");

/// What the venv needs besides the package.
const TOOLS: &[&str] = &["maturin>=1.9.4,<2", "pytest", "pyzmq", "msgpack"];
/// Checks the venv: the tools and the package import.
const IMPORTS: &str = "import messenger, messenger.aio, pytest, zmq, msgpack";
/// Bound on building the package (a cold dev build of the binding and the
/// library on two busy cores takes a few minutes).
const BUILD_LIMIT: Duration = Duration::from_secs(1800);
/// Bound on the whole pytest run (each test also bounds itself).
const PYTEST_LIMIT: Duration = Duration::from_secs(900);

/// Runs `cmd` (`NO_COLOR` set) in a process group of its own until it
/// exits or `limit` passes; then the whole group is killed (pytest's
/// `messenger serve` children), so nothing outlives the test.
fn run(mut cmd: Command, limit: Duration) -> std::io::Result<Ran> {
    cmd.env("NO_COLOR", "1");
    common::run_bounded_group(cmd, limit)
}

// ---------------------------------------------------------------------------
// The venv with the package

/// The venv's interpreter with the package installed and current, or
/// `None` when the calling test must be skipped (said once per run on
/// stderr). Panics when `CI` is set and the package cannot be had.
fn package_python() -> Option<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    python::once_or_skip(&PY, "the Python package built", bootstrap)
}

/// What the installed package is built from: a change to any of these
/// rebuilds it.
const SOURCES: &[&str] = &[
    "python/messenger",
    "python/pyproject.toml",
    "crates/python",
    "crates/messenger/src",
    "crates/messenger/Cargo.toml",
    "crates/proto/src",
    "crates/proto/Cargo.toml",
    "crates/zmtp/src",
    "crates/zmtp/Cargo.toml",
    "Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
];

/// A hash of the package's sources (names and contents), as hex.
fn source_key() -> String {
    fn walk(path: &Path, h: &mut DefaultHasher) {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for e in entries {
                if e.file_name().is_some_and(|n| n == "__pycache__") {
                    continue;
                }
                walk(&e, h);
            }
        } else if let Ok(bytes) = std::fs::read(path) {
            path.hash(h);
            bytes.hash(h);
        }
    }
    let mut h = DefaultHasher::new();
    for s in SOURCES {
        walk(&Path::new(MANIFEST_DIR).join(s), &mut h);
    }
    format!("{:016x}", h.finish())
}

fn bootstrap() -> Result<PathBuf, String> {
    let target = python::target_dir()?;
    let venv = target.join("pyenv-messenger");
    let py = python::venv_python(&venv);
    let key_file = venv.join("messenger-sources.key");
    let key = source_key();
    let current = || {
        std::fs::read_to_string(&key_file).is_ok_and(|k| k.trim() == key)
            && python::imports(&py, IMPORTS)
    };
    if current() {
        return Ok(py);
    }
    // One test binary builds at a time (`cargo test` may run several).
    let _lock = python::lock(&target.join("pyenv-messenger.lock"), BUILD_LIMIT)?;
    if current() {
        return Ok(py);
    }
    if !python::imports(&py, "import pytest, zmq, msgpack, maturin") {
        python::make_venv(&venv, TOOLS)?;
    }
    build(&target, &venv, &py)?;
    if !python::imports(&py, IMPORTS) {
        return Err("the package installed but does not import".into());
    }
    std::fs::write(&key_file, &key)
        .map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    Ok(py)
}

/// `pip install ./python` into the venv: maturin (the PEP 517 backend,
/// from the venv: no build isolation, so nothing is fetched again) with
/// the `dev` profile (a test build: quicker to compile; the benchmarks
/// use the release build a plain `pip install ./python` makes).
fn build(target: &Path, venv: &Path, py: &Path) -> Result<(), String> {
    let mut path = OsString::from(venv.join("bin"));
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    let mut pip = python::pip_install(py);
    pip.args(["--no-build-isolation", "--no-deps", "--force-reinstall"])
        .arg(Path::new(MANIFEST_DIR).join("python"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target.join("python-build"))
        .env("MATURIN_PEP517_ARGS", "--profile dev");
    let started = Instant::now();
    python::run_checked(pip, BUILD_LIMIT, "pip install ./python")?;
    let _ = writeln!(
        std::io::stderr(),
        "python_package: built and installed the package in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The tests

/// python/tests, with pytest: the blocking and asyncio APIs against
/// `messenger serve` and the `messenger` client commands (both directions,
/// tcp and ipc), 10,000 pipelined requests, 1,000 concurrent ones through
/// a Python server loop, CURVE both ways, a server restarted mid-stream,
/// a server loop that raises, fork, Ctrl-C, and examples/python/peer.py.
#[test]
fn pytest_suite_passes() {
    let Some(py) = package_python() else { return };
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "pytest",
        "python/tests",
        "-q",
        "-ra",
        "-p",
        "no:cacheprovider",
    ])
    // From the repository's root: python/messenger (the sources) is
    // then not on sys.path, and the installed package is what runs.
    .current_dir(MANIFEST_DIR)
    .env("MESSENGER_BIN", BIN)
    .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = run(cmd, PYTEST_LIMIT).expect("cannot run pytest");
    assert!(ran.ok(), "pytest failed: {}", ran.context());
    // The summary line, for the log of a passing run.
    if let Some(last) = ran.stdout.lines().rev().find(|l| !l.trim().is_empty()) {
        let _ = writeln!(std::io::stderr(), "python/tests: {last}");
    }
    assert!(
        !ran.stdout.contains("skipped"),
        "no pytest test may skip here: {}",
        ran.context()
    );
}

/// Runs the Rust model-server manager (examples/model_server_manager.rs)
/// on examples/python/model_server.py, run by `py` with `flags`, for up to
/// a minute.
fn run_manager(py: &Path, flags: &[&str]) -> Ran {
    let script = Path::new(MANIFEST_DIR).join("examples/python/model_server.py");
    let mut line = format!("{} {}", py.display(), script.display());
    for flag in flags {
        line = format!("{line} {flag}");
    }
    assert!(
        !line.contains("  "),
        "--model-server is split on spaces: {line}"
    );
    let mut cmd = common::example("model_server_manager");
    cmd.arg("--model-server").arg(&line);
    run(cmd, Duration::from_secs(60)).expect("cannot run the manager")
}

/// The Rust model-server manager (examples/model_server_manager.rs, the
/// NoisePage ModelServerManager's loop on the library) drives
/// examples/python/model_server.py, the model server written on the
/// package, as it drives tests/py/model_server.py (tests/users.rs): TRAIN
/// and INFER answered, CONNECTED delivered once, QUIT ends it with status 0.
#[test]
fn the_rust_manager_drives_the_python_model_server() {
    let Some(py) = package_python() else { return };
    let ran = run_manager(&py, &[]);
    assert!(ran.ok(), "{}", ran.context());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"TRAIN -> success true, result "", err """#,
            r#"INFER -> success true, result [1008.0,24.0], err """#,
            "CONNECTED delivered 1 time(s); the model server exited: exit status: 0",
        ],
        "{}",
        ran.context()
    );
}

/// A model server that dies before replying fails the manager fast, with
/// the reason, as with the pyzmq stand-in.
#[test]
fn a_python_model_server_that_dies_fails_the_manager_fast() {
    let Some(py) = package_python() else { return };
    let ran = run_manager(&py, &["--die-before-reply"]);
    assert!(!ran.ok(), "{}", ran.context());
    // Whichever the manager sees first: the session closing or the exit.
    assert!(
        ran.stderr
            .contains("no reply to TRAIN: the connection closed")
            || ran.stderr.contains("exited (exit status: 3) before TRAIN"),
        "{}",
        ran.context()
    );
    assert!(ran.elapsed < Duration::from_secs(10), "{}", ran.context());
}

/// What a user does, literally: a fresh venv, `pip install ./python` (a
/// release build, maturin fetched by pip), `import messenger`. Slow (a
/// release build from nothing): run with `--ignored`.
#[test]
#[ignore = "a release build in a fresh venv takes minutes; run with --ignored"]
fn pip_install_in_a_fresh_venv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let venv = dir.path().join("venv");
    let mut mk = Command::new("python3");
    mk.args(["-m", "venv"]).arg(&venv);
    if let Err(e) = python::run_checked(mk, Duration::from_secs(120), "python3 -m venv") {
        let _ = writeln!(std::io::stderr(), "SKIPPED: {e}");
        return;
    }
    let py = python::venv_python(&venv);
    let mut pip = Command::new(&py);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check"])
        .arg(Path::new(MANIFEST_DIR).join("python"))
        .env(
            "CARGO_TARGET_DIR",
            python::target_dir()
                .expect("target dir")
                .join("python-release"),
        );
    python::run_checked(pip, BUILD_LIMIT, "pip install ./python").unwrap_or_else(|e| panic!("{e}"));
    let mut import = Command::new(&py);
    import
        .args([
            "-c",
            "import messenger, messenger.aio; print(messenger.ECHO)",
        ])
        .current_dir(dir.path());
    let ran = python::run_checked(import, Duration::from_secs(60), "import messenger")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ran.stdout.trim(), "1");
}
