#!/usr/bin/env bash
# Run every test of the project, installing what the tests need first.
#
#   scripts/test.sh            everything (unit, integration, interop, browser, adversarial,
#                              the tether-client package, the guide, Autobahn)
#   TETHER_SKIP_AUTOBAHN=1     skip the Autobahn|Testsuite run
#   TETHER_SKIP_BROWSER=1      skip the headless-Chromium tests
#   TETHER_AUTOBAHN_DEFLATE=1  also run Autobahn 12.x/13.x (permessage-deflate)
#
# Exit status: 0 only if every step passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
step() { printf '\n==> %s\n' "$*" >&2; }
START=$(date +%s)

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step "dependencies (python websockets, chromium, playwright-core)"
scripts/deps.sh

step "MSRV: each crate builds with the Rust its rust-version declares (scripts/msrv.sh; rustup installs it)"
scripts/msrv.sh

step "cargo package (every crate, as crates.io would get it; --no-verify: verifying rebuilds each crate from scratch)"
cargo package --workspace --allow-dirty --no-verify --locked

step "cargo test (workspace, all features)"
cargo test --workspace --all-features --locked

step "cargo clippy (workspace, all features and targets; a warning fails)"
cargo clippy --workspace --all-features --all-targets --locked -- -D warnings

step "rustdoc (every crate, all features; a broken intra-doc link or a warning fails)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features --locked

step "tether-proto does not depend on tokio"
if cargo tree -p tether-proto -e normal --locked | grep -q tokio; then
    echo "tether-proto pulls in tokio:" >&2
    cargo tree -p tether-proto -e normal -i tokio >&2 || true
    exit 1
fi

step "release build of the tether binary and the Autobahn client"
cargo build --release --locked -p tether-cli
cargo build --release --locked -p tether --example autobahn_client

if [[ "${TETHER_SKIP_BROWSER:-0}" != 1 ]]; then
    step "browser tests (headless Chromium + playwright-core)"
    (cd tests/browser && TETHER_BIN="$ROOT/target/release/tether" TETHER_SCREENSHOTS="$ROOT/target/browser-screenshots" \
        node --test --test-concurrency=1)
fi

step "adversarial tests (hostile peers against tether serve)"
"${TETHER_PYTHON:-python3}" tests/adversarial/run.py --bin "$ROOT/target/release/tether" --debug-bin "$ROOT/target/debug/tether"

step "server API contract: schemathesis against docs/openapi.json on a running tether serve (bounded to 45 s)"
scripts/api-contract.sh "$ROOT/target/release/tether" 45

step "bench/ tooling: unit tests of bench/issue16.py's parsing, run.py --help (no benchmark is run)"
"${TETHER_PYTHON:-python3}" -m unittest discover -s bench -p 'test_*.py'
"${TETHER_PYTHON:-python3}" bench/run.py issue16 --help >/dev/null

step "tether-client (web/): tsc --noEmit, from Node with ws against tether serve, npm pack"
(cd tests/node && npx --no-install tsc -p . && TETHER_BIN="$ROOT/target/release/tether" node --test --test-concurrency=1)
(cd web && npm pack --dry-run --json --loglevel=error) | node -e '
    const [pkg] = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const files = pkg.files.map((f) => f.path).sort().join(" ");
    const want = "package.json tether.d.mts tether.d.ts tether.js tether.mjs";
    if (files !== want) { console.error(`npm pack: ${files}, expected ${want}`); process.exit(1); }
    console.error(`npm pack: ${pkg.id}, ${pkg.entryCount} files, ${pkg.size} bytes`);'

step "user guide (mdbook build guide; a missing include or file fails)"
scripts/guide.sh

if command -v systemd-analyze >/dev/null; then
    step "deploy/tether.service (systemd-analyze verify)"
    unit_dir=$(mktemp -d)
    sed "s|^ExecStart=/usr/local/bin/tether|ExecStart=$ROOT/target/release/tether|" deploy/tether.service > "$unit_dir/tether.service"
    out=$(systemd-analyze verify "$unit_dir/tether.service" 2>&1 || true)
    rm -rf "$unit_dir"
    if grep -q 'tether.service' <<<"$out"; then echo "$out" >&2; exit 1; fi
fi

if [[ "${TETHER_SKIP_AUTOBAHN:-0}" != 1 ]]; then
    step "Autobahn|Testsuite"
    scripts/autobahn.sh
fi

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - START ))" >&2
