//! CURVE (RFC 26) on the command line: `messenger keygen`, the certificates
//! it writes and reads (CZMQ's zcert text format, which pyzmq's
//! `zmq.auth` reads and writes too), allow-lists, and the `--curve-*`
//! flags that turn them into [`messenger::Curve`].
//!
//! A secret key is printed only by `messenger keygen` without `--out`.
//! Everywhere else errors name the file and the line, never a character of
//! a key, and text that held a secret key is overwritten before it is
//! freed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use messenger::Curve;
use messenger::curve::{KeyPair, PublicKey, SecretKey};

/// Largest certificate or allow-list read: a certificate is a few hundred
/// bytes, an allow-list of 10,000 keys under half a megabyte.
const MAX_FILE_LEN: u64 = 4 << 20;

/// Characters of a key in Z85.
const KEY_Z85_LEN: usize = 40;

/// `messenger serve`'s CURVE flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CurveServerArgs {
    /// Speak CURVE on tcp and ipc with the key pair of this secret
    /// certificate (`messenger keygen --out FILE`; CZMQ's and pyzmq's do
    /// too). Clients need its public key. inproc is unaffected.
    #[arg(long, value_name = "FILE")]
    curve_cert: Option<PathBuf>,
    /// Admit only the clients whose public keys are in this file (one Z85
    /// key per line, or public certificates; `#` comments). Repeatable.
    /// Without it any client with a key pair is admitted.
    #[arg(long, value_name = "FILE", requires = "curve_cert")]
    curve_allow: Vec<PathBuf>,
}

impl CurveServerArgs {
    /// The listeners' CURVE settings, if `--curve-cert` was given.
    pub fn load(&self) -> Result<Option<Curve>, String> {
        let Some(cert) = &self.curve_cert else {
            return Ok(None);
        };
        let keys = read_secret_cert(cert)?;
        let allow = if self.curve_allow.is_empty() {
            None
        } else {
            let mut all = HashSet::new();
            for file in &self.curve_allow {
                all.extend(read_allow_list(file)?);
            }
            Some(Arc::new(all))
        };
        Ok(Some(Curve {
            keys,
            server_key: None,
            allow,
        }))
    }
}

/// The CURVE flags of `send`, `request` and `ping`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CurveClientArgs {
    /// Speak CURVE to a server with this public key (Z85, 40 characters,
    /// as `messenger keygen` prints it), and reach only that server.
    // '-' is a Z85 character: a key may begin with one.
    #[arg(long, value_name = "Z85", value_parser = parse_public_key, allow_hyphen_values = true)]
    curve_server_key: Option<PublicKey>,
    /// Our key pair, from this secret certificate (for a server that
    /// admits only the keys it knows). Default: a new one for this run.
    #[arg(long, value_name = "FILE", requires = "curve_server_key")]
    curve_cert: Option<PathBuf>,
}

impl CurveClientArgs {
    /// The connection's CURVE settings, if `--curve-server-key` was given.
    pub fn load(&self) -> Result<Option<Curve>, String> {
        let Some(server_key) = self.curve_server_key else {
            return Ok(None);
        };
        let keys = match &self.curve_cert {
            Some(cert) => read_secret_cert(cert)?,
            None => {
                KeyPair::generate().map_err(|e| format!("cannot make a CURVE key pair: {e}"))?
            }
        };
        Ok(Some(Curve {
            keys,
            server_key: Some(server_key),
            allow: None,
        }))
    }
}

fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    PublicKey::from_z85(s.trim()).map_err(|e| format!("not a Z85 public key: {e}"))
}

// ---------------------------------------------------------------------------
// Text that held a secret

/// A string that held a secret key: zeroed when dropped (by `zeroize`,
/// whose writes the compiler may not skip).
struct Wiped(zeroize::Zeroizing<String>);

/// Reads `path` (at most [`MAX_FILE_LEN`] bytes) into a string wiped when
/// dropped, allocated once so no copy of it is left behind by a regrowth.
fn read_wiped(path: &Path) -> Result<Wiped, String> {
    let name = path.display();
    let file = File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a file"));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(format!(
            "{name} is {} bytes; a certificate or an allow-list is far smaller",
            meta.len()
        ));
    }
    let mut text = Wiped(zeroize::Zeroizing::new(String::with_capacity(
        meta.len() as usize + 1,
    )));
    file.take(MAX_FILE_LEN)
        .read_to_string(&mut text.0)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    Ok(text)
}

// ---------------------------------------------------------------------------
// Certificates (CZMQ's zcert format, in ZPL: rfc.zeromq.org/spec/4)

/// The banner of a secret certificate.
const SECRET_BANNER: &str = "\
#   ****  Generated by messenger keygen  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.
";

/// The banner of a public certificate.
const PUBLIC_BANNER: &str = "\
#   ****  Generated by messenger keygen  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange. Store public certificates in your home
#   directory, in the .curve subdirectory.
";

/// `keys` as a secret certificate.
fn secret_cert(keys: &KeyPair) -> Wiped {
    Wiped(zeroize::Zeroizing::new(format!(
        "{SECRET_BANNER}\nmetadata\ncurve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
        keys.public(),
        keys.secret().to_z85().as_str()
    )))
}

/// `key` as a public certificate.
fn public_cert(key: &PublicKey) -> String {
    format!("{PUBLIC_BANNER}\nmetadata\ncurve\n    public-key = \"{key}\"\n")
}

/// One meaningful line of a ZPL file: its name, and the raw text after
/// `=` if it has one.
struct ZplLine<'a> {
    indented: bool,
    name: &'a str,
    value: Option<&'a str>,
}

/// Splits line `line` of a ZPL file; `None` for a blank line or a comment.
fn zpl_line(line: &str) -> Option<ZplLine<'_>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return None;
    }
    let indented = body.len() != line.len();
    Some(match body.split_once('=') {
        Some((name, value)) => ZplLine {
            indented,
            name: name.trim(),
            value: Some(value),
        },
        None => ZplLine {
            indented,
            name: body.trim_end(),
            value: None,
        },
    })
}

/// The value of `name = value`: quoted (`"…"` or `'…'`) or not, with an
/// optional `# comment` after it. Errors never quote the value.
fn zpl_value(raw: &str) -> Result<&str, String> {
    let raw = raw.trim();
    let (value, rest) = match raw.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner = &raw[1..];
            let end = inner
                .find(q)
                .ok_or_else(|| format!("the value has no closing {q}"))?;
            (&inner[..end], &inner[end + 1..])
        }
        // Unquoted: up to the first space ('#' is a Z85 character).
        _ => match raw.find(char::is_whitespace) {
            Some(end) => (&raw[..end], &raw[end..]),
            None => (raw, ""),
        },
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("text after the value (quote it, or start a comment with #)".to_string());
    }
    Ok(value)
}

/// The keys of a certificate's `curve` section, with their line numbers.
#[derive(Default)]
struct CertKeys {
    public: Option<(usize, PublicKey)>,
    secret: Option<(usize, SecretKey)>,
}

/// Reads the `curve` section of a certificate. Errors say `FILE:LINE: why`.
fn parse_cert(text: &str, file: &str) -> Result<CertKeys, String> {
    let mut keys = CertKeys::default();
    let mut section = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(l) = zpl_line(line) else { continue };
        if !l.indented {
            // A top-level name opens a section (or is a name = value of
            // its own, which a certificate does not use).
            section = Some(l.name);
            continue;
        }
        if section != Some("curve") {
            continue;
        }
        let (Some(raw), which @ ("public-key" | "secret-key")) = (l.value, l.name) else {
            continue;
        };
        let value = zpl_value(raw).map_err(|e| format!("{file}:{n}: {which}: {e}"))?;
        if which == "public-key" {
            if let Some((first, _)) = keys.public {
                return Err(format!(
                    "{file}:{n}: a second public-key (the first is on line {first})"
                ));
            }
            let key =
                PublicKey::from_z85(value).map_err(|e| format!("{file}:{n}: public-key: {e}"))?;
            keys.public = Some((n, key));
        } else {
            if let Some((first, _)) = keys.secret {
                return Err(format!(
                    "{file}:{n}: a second secret-key (the first is on line {first})"
                ));
            }
            let key =
                SecretKey::from_z85(value).map_err(|e| format!("{file}:{n}: secret-key: {e}"))?;
            keys.secret = Some((n, key));
        }
    }
    Ok(keys)
}

/// The key pair of the secret certificate in `text` (read from `file`):
/// the public key is derived from the secret one and, when the file has
/// one, checked against it.
fn cert_key_pair(text: &str, file: &str) -> Result<KeyPair, String> {
    let keys = parse_cert(text, file)?;
    let Some((_, secret)) = keys.secret else {
        return Err(format!(
            "{file}: no secret-key in its curve section (a public certificate, \
             such as FILE.pub, cannot prove our identity: give the secret one)"
        ));
    };
    let pair = KeyPair::from_secret(secret);
    if let Some((n, public)) = keys.public
        && public != *pair.public()
    {
        return Err(format!(
            "{file}:{n}: public-key does not match the secret-key \
             (the file is damaged, or its halves come from two pairs)"
        ));
    }
    Ok(pair)
}

/// The key pair of the secret certificate at `path`.
pub fn read_secret_cert(path: &Path) -> Result<KeyPair, String> {
    let text = read_wiped(path)?;
    let file = path.display().to_string();
    if let Ok(meta) = std::fs::metadata(path)
        && meta.mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %file,
            mode = format_args!("{:o}", meta.mode() & 0o777),
            "this secret certificate can be read by other users; chmod 600 it"
        );
    }
    cert_key_pair(&text.0, &file)
}

// ---------------------------------------------------------------------------
// Allow-lists

/// The public keys of an allow-list (`text`, read from `file`): one Z85
/// key per line (quotes optional), or certificates (their `public-key`
/// lines; their section names and metadata are skipped); blank lines and
/// `#` comments ignored.
fn parse_allow_list(text: &str, file: &str) -> Result<HashSet<PublicKey>, String> {
    let mut keys = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(l) = zpl_line(line) else { continue };
        let body = line.trim();
        let key_text = match (l.name, l.value) {
            ("public-key", Some(raw)) => zpl_value(raw).map_err(|e| format!("{file}:{n}: {e}"))?,
            ("secret-key", Some(_)) => {
                return Err(format!(
                    "{file}:{n}: a secret-key has no place in an allow-list \
                     (give the public certificate, FILE.pub, or the public key)"
                ));
            }
            // A bare key ('=' is a Z85 character, so it may look like
            // `name = value`).
            _ if zpl_value(body).is_ok_and(|k| k.len() == KEY_Z85_LEN) => {
                zpl_value(body).map_err(|e| format!("{file}:{n}: {e}"))?
            }
            // Certificate metadata, and the certificate's sections.
            (_, Some(_)) | ("metadata" | "curve", None) => continue,
            (_, None) => zpl_value(body).map_err(|e| format!("{file}:{n}: {e}"))?,
        };
        let key = PublicKey::from_z85(key_text)
            .map_err(|e| format!("{file}:{n}: not a Z85 public key: {e}"))?;
        keys.insert(key);
    }
    if keys.is_empty() {
        return Err(format!(
            "{file}: no public keys (every client would be refused)"
        ));
    }
    Ok(keys)
}

/// The public keys of the allow-list at `path`.
pub fn read_allow_list(path: &Path) -> Result<HashSet<PublicKey>, String> {
    let text = read_wiped(path)?;
    parse_allow_list(&text.0, &path.display().to_string())
}

// ---------------------------------------------------------------------------
// `messenger keygen`

/// `FILE.pub` for `FILE`.
fn public_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path` with `mode`; an existing file is refused.
fn create_new(path: &Path, mode: u32) -> Result<File, String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{} exists; not overwriting it", path.display())
            }
            _ => format!("cannot create {}: {e}", path.display()),
        })
}

fn write_all(mut file: &File, path: &Path, text: &str) -> Result<(), String> {
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A new key pair: as a secret certificate on stdout, or with `out` in
/// `out` (mode 0600) and `out.pub` (0644), its public key on stdout.
pub fn keygen(out: Option<PathBuf>) -> Result<(), String> {
    keygen_to(out, &mut std::io::stdout().lock())
}

/// [`keygen`], printing to `stdout`.
fn keygen_to(out: Option<PathBuf>, stdout: &mut impl Write) -> Result<(), String> {
    let keys = KeyPair::generate().map_err(|e| format!("cannot make a key pair: {e}"))?;
    let Some(out) = out else {
        let cert = secret_cert(&keys);
        return stdout
            .write_all(cert.0.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write the certificate: {e}"));
    };
    let pub_path = public_path(&out);
    let secret_file = create_new(&out, 0o600)?;
    let written = create_new(&pub_path, 0o644).and_then(|public_file| {
        let done = write_all(&secret_file, &out, &secret_cert(&keys).0)
            .and_then(|()| write_all(&public_file, &pub_path, &public_cert(keys.public())));
        if done.is_err() {
            let _ = std::fs::remove_file(&pub_path);
        }
        done
    });
    if let Err(e) = written {
        // No half-made pair: the secret file goes too.
        let _ = std::fs::remove_file(&out);
        return Err(e);
    }
    writeln!(stdout, "{}", keys.public())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libzmq's documented test keys (doc/zmq_curve.adoc).
    const PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";
    const OTHER_PUBLIC: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";

    fn cert(public: &str, secret: &str) -> String {
        format!(
            "#   ZeroMQ CURVE **Secret** Certificate\n\nmetadata\n    name = \"x y\"\n\
             curve\n    public-key = \"{public}\"\n    secret-key = \"{secret}\"\n"
        )
    }

    fn assert_no_key(e: &str) {
        for key in [PUBLIC, SECRET] {
            for part in [&key[..10], &key[15..25], &key[30..]] {
                assert!(!e.contains(part), "the error shows key characters: {e}");
            }
        }
    }

    #[test]
    fn reads_a_secret_certificate() {
        let pair = cert_key_pair(&cert(PUBLIC, SECRET), "c").unwrap();
        assert_eq!(pair.public().to_z85(), PUBLIC);
        assert_eq!(pair.secret().to_z85().as_str(), SECRET);
    }

    #[test]
    fn keygen_text_reads_back() {
        let mut printed = Vec::new();
        keygen_to(None, &mut printed).unwrap();
        let printed = String::from_utf8(printed).unwrap();
        assert!(printed.starts_with(SECRET_BANNER), "{printed}");
        let keys = cert_key_pair(&printed, "stdout").unwrap();
        assert_eq!(
            cert_key_pair(&secret_cert(&keys).0, "c").unwrap().public(),
            keys.public()
        );
        // The public certificate has no secret.
        let public = public_cert(keys.public());
        assert!(!public.contains(keys.secret().to_z85().as_str()));
        let e = cert_key_pair(&public, "c.pub").unwrap_err();
        assert!(e.starts_with("c.pub: no secret-key"), "{e}");
        // And it is an allow-list.
        let allow = parse_allow_list(&public, "c.pub").unwrap();
        assert_eq!(allow, HashSet::from([*keys.public()]));
    }

    #[test]
    fn quotes_comments_and_layout_are_optional() {
        for text in [
            format!("curve\n    public-key = {PUBLIC}\n    secret-key = {SECRET}\n"),
            format!("curve\n    secret-key = '{SECRET}'   # ours\n"),
            format!("curve\r\n\tsecret-key=\"{SECRET}\"\r\n"),
            format!(
                "# c\n\nmetadata\ncurve\n  public-key = \"{PUBLIC}\" # p\n  secret-key = {SECRET} # s\n"
            ),
        ] {
            let pair = cert_key_pair(&text, "c").unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(pair.public().to_z85(), PUBLIC, "{text}");
        }
    }

    #[test]
    fn keys_outside_the_curve_section_do_not_count() {
        let text = format!("metadata\n    secret-key = \"{SECRET}\"\ncurve\n");
        let e = cert_key_pair(&text, "c").unwrap_err();
        assert!(e.contains("no secret-key"), "{e}");
    }

    #[test]
    fn mismatched_halves_are_refused_by_line() {
        let e = cert_key_pair(&cert(OTHER_PUBLIC, SECRET), "dir/c").unwrap_err();
        assert!(e.starts_with("dir/c:6: public-key does not match"), "{e}");
        assert_no_key(&e);
        assert!(!e.contains(&OTHER_PUBLIC[..10]), "{e}");
    }

    #[test]
    fn bad_keys_are_named_by_line_never_shown() {
        let short = &SECRET[..39];
        let e = cert_key_pair(&cert(PUBLIC, short), "c").unwrap_err();
        assert!(e.starts_with("c:7: secret-key: "), "{e}");
        assert_no_key(&e);
        let bad = format!("{}~{}", &SECRET[..3], &SECRET[4..]);
        let e = cert_key_pair(&cert(PUBLIC, &bad), "c").unwrap_err();
        assert!(e.starts_with("c:7: secret-key: "), "{e}");
        assert_no_key(&e);
        let e = cert_key_pair(&format!("curve\n    secret-key = \"{SECRET}\n"), "c").unwrap_err();
        assert!(e.starts_with("c:2: secret-key: "), "{e}");
        assert_no_key(&e);
        let e = cert_key_pair(&format!("curve\n    secret-key = {SECRET} trailing\n"), "c")
            .unwrap_err();
        assert!(e.starts_with("c:2: "), "{e}");
        assert_no_key(&e);
        let twice = format!("curve\n    secret-key = {SECRET}\n    secret-key = {SECRET}\n");
        let e = cert_key_pair(&twice, "c").unwrap_err();
        assert!(e.starts_with("c:3: a second secret-key"), "{e}");
    }

    #[test]
    fn allow_lists_take_keys_and_certificates() {
        let text = format!(
            "# clients\n{PUBLIC}\n\n  \"{OTHER_PUBLIC}\"  # quoted\n{}",
            public_cert(&PUBLIC.parse().unwrap())
        );
        let keys = parse_allow_list(&text, "a").unwrap();
        assert_eq!(
            keys,
            HashSet::from([PUBLIC.parse().unwrap(), OTHER_PUBLIC.parse().unwrap()])
        );
    }

    #[test]
    fn allow_list_keys_may_hold_equals_signs() {
        // '=' is a Z85 character: such a key is not `name = value`.
        let key = (0..1000)
            .map(|_| *KeyPair::generate().unwrap().public())
            .find(|k| k.to_z85()[1..39].contains('='))
            .expect("a key with '=' inside, among 1000");
        for text in [key.to_z85(), format!("  {key} # c"), format!("\"{key}\"")] {
            let keys = parse_allow_list(&text, "a").unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(keys, HashSet::from([key]), "{text}");
        }
    }

    #[test]
    fn allow_list_errors_name_the_line() {
        let e = parse_allow_list(&format!("{PUBLIC}\n# x\n{}\n", &PUBLIC[1..]), "a").unwrap_err();
        assert!(e.starts_with("a:3: not a Z85 public key"), "{e}");
        assert_no_key(&e);
        let e = parse_allow_list(&cert(PUBLIC, SECRET), "a").unwrap_err();
        assert!(e.starts_with("a:7: a secret-key has no place"), "{e}");
        assert_no_key(&e);
        let e = parse_allow_list("# nobody\n\n", "a").unwrap_err();
        assert!(e.starts_with("a: no public keys"), "{e}");
    }

    #[test]
    fn a_server_key_may_begin_with_a_hyphen() {
        use clap::Parser;
        let key = format!("-{}", "0".repeat(39));
        for verb in ["request", "send"] {
            let args = ["messenger", verb, "tcp://127.0.0.1:1", "b"];
            let cli = crate::cli::Cli::try_parse_from(
                args.iter().copied().chain(["--curve-server-key", &key]),
            )
            .unwrap_or_else(|e| panic!("{verb}: {e}"));
            assert!(format!("{cli:?}").contains(&key), "{verb}: {cli:?}");
        }
        let args = [
            "messenger",
            "ping",
            "tcp://127.0.0.1:1",
            "--curve-server-key",
            &key,
        ];
        crate::cli::Cli::try_parse_from(args).unwrap();
    }

    #[test]
    fn keygen_writes_both_files_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("server.cert");
        let mut printed = Vec::new();
        keygen_to(Some(out.clone()), &mut printed).unwrap();
        let secret_mode = std::fs::metadata(&out).unwrap().mode() & 0o777;
        assert_eq!(secret_mode & 0o077, 0, "{secret_mode:o}");
        let pub_path = public_path(&out);
        assert_eq!(pub_path, dir.path().join("server.cert.pub"));
        let pair = read_secret_cert(&out).unwrap();
        let allow = read_allow_list(&pub_path).unwrap();
        assert_eq!(allow, HashSet::from([*pair.public()]));
        // Only the public key is printed.
        assert_eq!(printed, format!("{}\n", pair.public()).into_bytes());
        // Again: refused, and the files are as they were.
        let e = keygen_to(Some(out.clone()), &mut Vec::new()).unwrap_err();
        assert!(e.contains("exists; not overwriting"), "{e}");
        assert_eq!(read_secret_cert(&out).unwrap().public(), pair.public());
        // A stray FILE.pub: refused, and no secret file is left behind.
        let lone = dir.path().join("lone");
        std::fs::write(public_path(&lone), "x").unwrap();
        let e = keygen_to(Some(lone.clone()), &mut Vec::new()).unwrap_err();
        assert!(e.contains("lone.pub exists"), "{e}");
        assert!(!lone.exists());
    }
}
