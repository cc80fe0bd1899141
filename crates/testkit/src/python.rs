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
    let ci = std::env::var_os("CI").is_some();
    let py = PY.get_or_init(|| {
        let r = bootstrap();
        if let (Err(why), false) = (&r, ci) {
            // Straight to the stderr handle: libtest captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: tests that need python3 with pyzmq and msgpack: {why}"
            );
        }
        r
    });
    match py {
        Ok(p) => Some(p.clone()),
        Err(why) if ci => {
            panic!("these tests need python3 with pyzmq and msgpack (CI is set): {why}")
        }
        Err(_) => None,
    }
}

/// The workspace's target directory, wherever it is (`CARGO_TARGET_DIR`
/// included): the running test binary is `TARGET/PROFILE/deps/NAME`.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} is not under a target directory", exe.display()))
}

fn bootstrap() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MESSENGER_TEST_PYTHON") {
        let p = PathBuf::from(p);
        return if has_modules(&p) {
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
    let py = venv.join("bin").join("python");
    if has_modules(&py) {
        return Ok(py);
    }
    std::fs::create_dir_all(&target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let lock_path = target.join("pyenv.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // Another test binary may be building the venv: wait for its lock.
    let mut failed = None;
    let locked =
        super::wait_until_blocking(Duration::from_secs(600), Duration::from_millis(200), || {
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
        return Err(format!("cannot lock {}: {e}", lock_path.display()));
    }
    if !locked {
        return Err(format!("{} stayed locked for 10 min", lock_path.display()));
    }
    // Someone else may have built it while we waited.
    if has_modules(&py) {
        return Ok(py);
    }
    let mut version = Command::new("python3");
    version.arg("--version");
    run_quiet(version, Duration::from_secs(30), "python3 --version")
        .map_err(|e| format!("python3 is not usable: {e}"))?;
    // A venv that exists but cannot import the modules is half-built.
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove broken {}: {e}", venv.display()))?;
    }
    let built = (|| {
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(&venv);
        run_quiet(mk, Duration::from_secs(120), "python3 -m venv")?;
        let mut pip = Command::new(&py);
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "pyzmq",
            "msgpack",
        ]);
        run_quiet(pip, Duration::from_secs(600), "pip install pyzmq msgpack")?;
        if has_modules(&py) {
            Ok(())
        } else {
            Err("pyzmq and msgpack installed but do not import".to_string())
        }
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&venv);
        return Err(e);
    }
    Ok(py)
}

/// Whether `py` runs and imports the modules.
fn has_modules(py: &Path) -> bool {
    if !py.exists() {
        return false;
    }
    let mut cmd = Command::new(py);
    cmd.args(["-c", MODULES]);
    run_quiet(cmd, Duration::from_secs(60), "import check").is_ok()
}

/// Runs `cmd` to completion within `limit`; when it fails (or is killed
/// for running too long) its output is in the error.
pub fn run_quiet(cmd: Command, limit: Duration, what: &str) -> Result<(), String> {
    let ran = super::run_bounded(cmd, limit).map_err(|e| format!("cannot run {what}: {e}"))?;
    let (out, err) = (ran.stdout, ran.stderr);
    match ran.status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{what} failed ({s}):\n{out}\n{err}")),
        None => Err(format!(
            "{what}: still running after {limit:?}; killed\n{out}\n{err}"
        )),
    }
}
