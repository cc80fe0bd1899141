//! The Python interpreter for tests that run pyzmq peers: one venv at
//! `target/pyenv` with pyzmq and msgpack, created on first use and reused
//! after, by every test binary.
//!
//! - `MESSENGER_TEST_PYTHON=/path/to/python` uses that interpreter instead
//!   (it must import zmq and msgpack), e.g. offline.
//! - Several test binaries may bootstrap at once: a lock file
//!   (`target/pyenv.lock`) lets one build the venv while the others wait
//!   for it.
//! - Without python3 or PyPI the tests print `SKIPPED: <why>` once per test
//!   binary and pass, unless `CI` is set, in which case they fail.
//! - Its pieces serve other venvs too (tests/python_package.rs builds the
//!   Python package's): [`once_or_skip`], [`target_dir`], [`lock`],
//!   [`make_venv`], [`pip_install`], [`imports`], [`run_checked`].

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The modules every Python peer in the tests may import.
const MODULES: &str = "import zmq, msgpack";

/// The interpreter to run Python peers with, or `None` when the calling
/// test must be skipped (said once per test binary on stderr). Panics when
/// `CI` is set and no interpreter can be had. Bootstraps once per binary.
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once_or_skip(&PY, "python3 with pyzmq and msgpack", bootstrap)
}

/// What `bootstrap` gives (run once per test binary, kept in `cell`), or
/// `None` when the calling test must be skipped: the reason is said once
/// on stderr, as `SKIPPED: tests that need {needs}: {why}`. Panics
/// instead when `CI` is set.
pub fn once_or_skip(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    needs: &str,
    bootstrap: impl FnOnce() -> Result<PathBuf, String>,
) -> Option<PathBuf> {
    let ci = std::env::var_os("CI").is_some();
    let py = cell.get_or_init(|| {
        let r = bootstrap();
        if let (Err(why), false) = (&r, ci) {
            // Straight to the stderr handle: libtest captures eprintln!.
            let _ = writeln!(std::io::stderr(), "SKIPPED: tests that need {needs}: {why}");
        }
        r
    });
    match py {
        Ok(p) => Some(p.clone()),
        Err(why) if ci => panic!("these tests need {needs} (CI is set): {why}"),
        Err(_) => None,
    }
}

/// The workspace's target directory, wherever it is (`CARGO_TARGET_DIR`
/// included): the running test binary is `TARGET/PROFILE/deps/NAME`.
pub fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} is not under a target directory", exe.display()))
}

fn bootstrap() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MESSENGER_TEST_PYTHON") {
        let p = PathBuf::from(p);
        return if imports(&p, MODULES) {
            Ok(p)
        } else {
            Err(format!(
                "MESSENGER_TEST_PYTHON={} cannot `{MODULES}`",
                p.display()
            ))
        };
    }
    let target = target_dir()?;
    let venv = target.join("pyenv");
    let py = venv_python(&venv);
    if imports(&py, MODULES) {
        return Ok(py);
    }
    // Another test binary may be building the venv: wait for its lock.
    let _lock = lock(&target.join("pyenv.lock"), Duration::from_secs(600))?;
    // Someone else may have built it while we waited.
    if imports(&py, MODULES) {
        return Ok(py);
    }
    make_venv(&venv, &["pyzmq", "msgpack"])?;
    if !imports(&py, MODULES) {
        let _ = std::fs::remove_dir_all(&venv);
        return Err("pyzmq and msgpack installed but do not import".to_string());
    }
    Ok(py)
}

/// The interpreter of the venv at `venv`.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Takes the lock file at `path` (made, with its directory, if missing),
/// waiting up to `limit` for whoever holds it: test binaries that build
/// the same venv take turns. Held until the file is dropped.
pub fn lock(path: &Path, limit: Duration) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut failed = None;
    let locked = super::wait_until_blocking(limit, Duration::from_millis(200), || {
        match lock.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => {
                failed = Some(e);
                true
            }
        }
    });
    if let Some(e) = failed {
        return Err(format!("cannot lock {}: {e}", path.display()));
    }
    if !locked {
        return Err(format!("{} stayed locked for {limit:?}", path.display()));
    }
    Ok(lock)
}

/// A fresh venv at `venv` (one there already is removed: it is half-built)
/// with `packages` from PyPI. A venv that fails to build is removed.
pub fn make_venv(venv: &Path, packages: &[&str]) -> Result<(), String> {
    let mut version = Command::new("python3");
    version.arg("--version");
    run_quiet(version, Duration::from_secs(30), "python3 --version")
        .map_err(|e| format!("python3 is not usable: {e}"))?;
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .map_err(|e| format!("cannot remove broken {}: {e}", venv.display()))?;
    }
    let built = (|| {
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(venv);
        run_quiet(mk, Duration::from_secs(120), "python3 -m venv")?;
        let mut pip = pip_install(&venv_python(venv));
        pip.args(packages);
        let what = format!("pip install {}", packages.join(" "));
        run_quiet(pip, Duration::from_secs(600), &what)
    })();
    if built.is_err() {
        let _ = std::fs::remove_dir_all(venv);
    }
    built
}

/// `py -m pip install`, quiet and never asking; the caller adds what to
/// install.
pub fn pip_install(py: &Path) -> Command {
    let mut pip = Command::new(py);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
    ]);
    pip
}

/// Whether `py` runs `code` (imports, say) successfully.
pub fn imports(py: &Path, code: &str) -> bool {
    if !py.exists() {
        return false;
    }
    let mut cmd = Command::new(py);
    cmd.args(["-c", code]);
    run_quiet(cmd, Duration::from_secs(60), "import check").is_ok()
}

/// Runs `cmd` to completion within `limit`; when it fails (or is killed
/// for running too long) its output is in the error.
pub fn run_quiet(cmd: Command, limit: Duration, what: &str) -> Result<(), String> {
    run_checked(cmd, limit, what).map(drop)
}

/// Runs `cmd` (`NO_COLOR` set) in a process group of its own within
/// `limit` ([`run_bounded_group`](super::run_bounded_group)): what it
/// left when it succeeded, else an error with its status and output.
pub fn run_checked(mut cmd: Command, limit: Duration, what: &str) -> Result<super::Ran, String> {
    cmd.env("NO_COLOR", "1");
    let ran =
        super::run_bounded_group(cmd, limit).map_err(|e| format!("cannot run {what}: {e}"))?;
    if ran.ok() {
        Ok(ran)
    } else {
        Err(format!("{what} failed: {}", ran.context()))
    }
}
