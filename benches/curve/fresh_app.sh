#!/bin/sh
# Does an application that embeds the library get the repository's CURVE
# speed? Builds a fresh Cargo project outside the repository, as a user
# would make one (`cargo new`, `messenger = { path = ... }`, no
# .cargo/config.toml, RUSTFLAGS unset, the default release profile), whose
# main serves like `messenger serve --bind EP --curve-cert FILE` (the
# builtin ECHO answers the bench's requests), then runs benches/curve/run.py
# with it as `--other fresh=...`: `messenger serve / fresh, both CURVE` is
# the repository's build over the fresh app's, in the same rounds, and
# `fresh / libzmq` the app's against libzmq's server.
#
#   benches/curve/fresh_app.sh                      # 64 B and 1 KiB, 5 rounds
#   benches/curve/fresh_app.sh --rounds 3 --seconds 1.5
#   benches/curve/fresh_app.sh --rounds 5 --other before=/tmp/old/target/release/messenger
#   LIB=/path/to/other/checkout FRESH=/tmp/freshapp-old benches/curve/fresh_app.sh
#
# Arguments go to run.py (default --rounds 5). BUILD_ONLY=1 builds the app
# and prints its path (for run.py --other LABEL=PATH by hand). FRESH
# (default /tmp/freshapp) is where the app is made: its sources are
# rewritten on every run, its target/ kept. LIB is the checkout whose
# crates/messenger it depends on (default: this one). The app starts from
# LIB's Cargo.lock, so it builds the same dependency versions and only the
# build's configuration differs; Cargo prunes what the app does not use.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LIB=$(cd "${LIB:-$ROOT}" && pwd)
FRESH=${FRESH:-/tmp/freshapp}

case "$FRESH" in
"$ROOT"/* | "$LIB"/*) echo "FRESH must be outside the repository: its .cargo/config.toml would apply" >&2; exit 2 ;;
esac
# Nothing may configure the build: no config file here or above (Cargo
# reads every .cargo/config.toml from the directory up, and ~/.cargo's).
d=$FRESH
while :; do
    for f in "$d/.cargo/config.toml" "$d/.cargo/config"; do
        if [ -e "$f" ] && [ "$d" != "$FRESH" ]; then echo "$f would configure the fresh app's build" >&2; exit 2; fi
    done
    [ "$d" = / ] && break
    d=$(dirname "$d")
done
for f in "${CARGO_HOME:-$HOME/.cargo}/config.toml" "${CARGO_HOME:-$HOME/.cargo}/config"; do
    if [ -e "$f" ]; then echo "note: $f applies to every build, the repository's too" >&2; fi
done
# Sources replaced, target/ kept (a later run rebuilds only what changed).
rm -rf "$FRESH/.cargo" "$FRESH/src"
mkdir -p "$FRESH/src"
cat >"$FRESH/Cargo.toml" <<EOF
[package]
name = "freshapp"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
messenger = { path = "$LIB/crates/messenger" }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
EOF
cp "$LIB/Cargo.lock" "$FRESH/Cargo.lock"
cat >"$FRESH/src/main.rs" <<'EOF'
//! `freshapp serve --bind EP --curve-cert FILE`: the library's CURVE
//! server as an application embeds it, for benches/curve/run.py --other.
use messenger::curve::{KeyPair, SecretKey};
use messenger::{Curve, Endpoint, Messenger};

#[tokio::main]
async fn main() {
    let (mut bind, mut cert) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "serve" => {}
            "--bind" => bind = args.next(),
            "--curve-cert" => cert = args.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    let (bind, cert) = (bind.expect("--bind"), cert.expect("--curve-cert"));
    // The zcert secret certificate `messenger keygen` writes.
    let text = std::fs::read_to_string(&cert).expect("read the certificate");
    let secret = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret-key"))
        .and_then(|v| v.split_once('='))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .expect("a secret-key line");
    let keys = KeyPair::from_secret(SecretKey::from_z85(&secret).expect("a Z85 secret key"));
    let m = Messenger::builder()
        .identity("messenger-serve")
        .curve(Curve { keys, server_key: None, allow: None })
        .build()
        .expect("a messenger");
    let endpoint: Endpoint = bind.parse().expect("an endpoint");
    let info = m
        .listen_for_connection(&endpoint, |_, _| {})
        .await
        .expect("listening");
    println!("{{\"listening\": \"{}\"}}", info.endpoint);
    // run.py stops us with SIGTERM.
    std::future::pending::<()>().await;
}
EOF

echo "building $FRESH against $LIB/crates/messenger (no .cargo/config.toml, RUSTFLAGS unset)" >&2
(cd "$FRESH" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_TARGET_DIR \
    cargo build --release --quiet)
if [ -n "${BUILD_ONLY:-}" ]; then
    echo "$FRESH/target/release/freshapp"
    exit 0
fi
if [ $# -eq 0 ]; then
    set -- --rounds 5
fi
exec python3 "$ROOT/benches/curve/run.py" --other "fresh=$FRESH/target/release/freshapp" "$@"
