#!/usr/bin/env bash
# Install what the tests need beyond Rust, idempotently (quick when present):
#   - Python's websockets package: the interop peer we did not write;
#   - Debian's Chromium and playwright-core: the browser tests;
#   - tmux: drives `tether connect` through a pseudo-terminal;
#   - strace: counts the syscalls of an echoed message (tether-cli/tests/syscalls.rs);
#   - Debian's redis-server and nginx: the cluster tests (tether-cli/tests/cluster.rs
#     starts its own instances on free ports; the system services are not used);
#   - Autobahn|Testsuite is installed by conformance/setup.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO=sudo; fi
APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED == 0 ]]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PY=${TETHER_PYTHON:-python3}
if ! "$PY" -c 'import websockets' 2>/dev/null; then
    echo "installing python websockets for interop tests" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check 'websockets>=13' \
        || "$PY" -m pip install --quiet --break-system-packages 'websockets>=13'
fi
"$PY" -c 'import websockets; print("python websockets", websockets.__version__)' >&2

# schemathesis: checks the server API against docs/openapi.json (scripts/api-contract.sh).
SCHEMATHESIS_VERSION=4.32.5
if ! "$PY" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION for the server API contract test" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
        || "$PY" -m pip install --quiet --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
fi

if ! command -v openssl >/dev/null; then
    echo "installing openssl for the RFC 8441 browser test's certificate (tests/browser/http2.test.mjs)" >&2
    apt_install openssl
fi

if ! command -v strace >/dev/null; then
    echo "installing strace for the syscalls-per-message test (tether-cli/tests/syscalls.rs)" >&2
    apt_install strace
fi

if ! command -v tmux >/dev/null; then
    echo "installing tmux for the interactive tether connect test" >&2
    apt_install tmux
fi

if [[ "${TETHER_SKIP_BROWSER:-0}" != 1 ]]; then
    if [[ ! -x /usr/bin/chromium ]]; then
        echo "installing Debian's chromium for browser tests" >&2
        apt_install chromium
    fi
    if ! command -v node >/dev/null; then
        echo "installing nodejs and npm for browser tests" >&2
        apt_install nodejs npm
    fi
    if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
        (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    fi
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)" >&2
fi

# tests/node (the tether-client package from Node, its TypeScript types)
# and the user guide (mdbook) run in every configuration.
if ! command -v node >/dev/null; then
    echo "installing nodejs and npm for the tether-client package tests" >&2
    apt_install nodejs npm
fi
if [[ ! -d tests/node/node_modules/typescript ]]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
MDBOOK_VERSION=0.5.4
if ! mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION"; then
    echo "installing mdbook $MDBOOK_VERSION for the user guide (cargo install, a few minutes)" >&2
    cargo install mdbook --version "$MDBOOK_VERSION" --locked --quiet
fi
echo "$(mdbook --version), typescript $(cd tests/node && npx --no-install tsc --version | cut -d' ' -f2)" >&2

if [[ "${TETHER_SKIP_CLUSTER:-0}" != 1 ]]; then
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing ${missing[*]} for the cluster tests" >&2
        apt_install "${missing[@]}"
    fi
    echo "redis: $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo missing), nginx: $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | cut -d/ -f2)" >&2
fi
