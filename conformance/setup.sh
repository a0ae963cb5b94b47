#!/usr/bin/env bash
# Install Autobahn|Testsuite (wstest) into a private cache directory, without
# Docker and without touching the system Python.
#
#   conformance/setup.sh            # install (no-op if already installed)
#   TETHER_AUTOBAHN_HOME=/some/dir conformance/setup.sh
#   AUTOBAHN_DEBIAN_MIRROR=http://host/debian conformance/setup.sh  # default: the system's mirror
#   AUTOBAHN_REINSTALL=1 conformance/setup.sh   # wipe and reinstall
#
# wstest is a Python 2.7 program and Debian 12 has no Python 2.7, so:
#   1. Python 2.7 .debs from Debian 11 (bullseye) are downloaded with a private
#      apt configuration and unpacked (dpkg -x) into $H/py27 -- nothing is
#      installed system-wide;
#   2. pip 20.3.4 / setuptools 44.1.1 / wheel 0.37.1 (last releases for 2.7)
#      are fetched with the host's python3 pip and installed into $H/venv;
#   3. autobahntestsuite==25.10.1 and its pinned requirements (from the
#      sdist's egg-info/requires.txt) are installed into $H/venv;
#   4. a sitecustomize.py makes the .pth files of $H/venv take effect, and a
#      wrapper $H/bin/wstest sets LD_LIBRARY_PATH/PYTHONPATH and runs it.
# See /work/shared/docs/autobahn.md (the recipe this follows).
set -euo pipefail

AUTOBAHN_VERSION=25.10.1
MARKER_CONTENT="autobahntestsuite==${AUTOBAHN_VERSION} py2.7-bullseye v1"

H="${TETHER_AUTOBAHN_HOME:-$HOME/.cache/tether-autobahn}"
PREFIX="$H/py27"
VENV="$H/venv"
SITE="$H/site"
DL="$H/downloads"
APTDIR="$H/apt"
MARKER="$H/.installed"

log() { printf '[autobahn-setup] %s\n' "$*" >&2; }
die() { printf '[autobahn-setup] ERROR: %s\n' "$*" >&2; exit 1; }

is_installed() {
    [[ -f "$MARKER" && "$(cat "$MARKER" 2>/dev/null)" == "$MARKER_CONTENT" && -x "$H/bin/wstest" ]]
}

if [[ "${AUTOBAHN_REINSTALL:-0}" != 1 ]] && is_installed; then
    log "wstest already installed in $H (marker $MARKER)"
    exit 0
fi

# setup.sh deletes and recreates py27/ venv/ site/ bin/ under $H: only use a
# folder that is new, empty, or was made by this script.
if [[ -d "$H" && -n "$(ls -A "$H" 2>/dev/null)" && ! -e "$H/.lock" ]]; then
    die "$H is not empty and was not made by this script; choose another TETHER_AUTOBAHN_HOME"
fi
mkdir -p "$H"
# Serialise concurrent installs into the same directory.
exec 9>"$H/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [[ "${AUTOBAHN_REINSTALL:-0}" != 1 ]] && is_installed; then
        log "wstest installed by a concurrent run in $H"
        exit 0
    fi
fi

START=$(date +%s)
log "installing Autobahn|Testsuite $AUTOBAHN_VERSION into $H"

# ---------------------------------------------------------------- prerequisites
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need to install $* but apt-get is missing"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update (system sources)"
        $SUDO apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

for tool in apt-get dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: this installer needs a Debian-based system"
done

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -s "$KEYRING" ]]; then
    apt_install debian-archive-keyring
fi
[[ -s "$KEYRING" ]] || die "$KEYRING missing even after installing debian-archive-keyring"

PY3="${PYTHON3:-python3}"
if ! command -v "$PY3" >/dev/null 2>&1; then
    apt_install python3 python3-pip
fi
if ! "$PY3" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi
"$PY3" -m pip --version >/dev/null 2>&1 || die "'$PY3 -m pip' does not work"

if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    apt_install gcc libc6-dev   # wsaccel builds a C extension
fi

# Use the system CA bundle for pip (both pips) unless told otherwise: on
# machines behind a TLS-inspecting proxy the bundled certifi is not enough.
if [[ -z "${PIP_CERT:-}" && -s /etc/ssl/certs/ca-certificates.crt ]]; then
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

# ---------------------------------------------------------------- start clean
rm -rf "$PREFIX" "$VENV" "$SITE" "${H:?}/bin" "$MARKER"
mkdir -p "$PREFIX" "$VENV" "$SITE" "$H/bin" "$DL/debs" "$DL/wheels" "$DL/sdist"

# ---------------------------------------------------------------- 1. Python 2.7
# Same Debian mirror as the system's bookworm sources.
MIRROR="${AUTOBAHN_DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" ]]; then
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        MIRROR=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [[ -n "$MIRROR" ]] && break
    done
fi
if [[ -z "$MIRROR" && -f /etc/apt/sources.list ]]; then
    MIRROR=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list)
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"

mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::Retries=3"
)
# bullseye will eventually leave the regular mirrors for archive.debian.org.
BULLSEYE_OK=0
for m in "$MIRROR" http://archive.debian.org/debian; do
    echo "deb [signed-by=$KEYRING] $m bullseye main" > "$APTDIR/sources.list"
    log "apt-get update (private source list: $m bullseye main)"
    if apt-get "${APT_OPTS[@]}" update -qq; then BULLSEYE_OK=1; break; fi
    log "apt-get update of bullseye from $m failed"
    [[ -n "${AUTOBAHN_DEBIAN_MIRROR:-}" ]] && break   # explicit mirror: no fallback
done
[[ $BULLSEYE_OK -eq 1 ]] || die "cannot fetch Debian bullseye package lists (set AUTOBAHN_DEBIAN_MIRROR to a mirror that still carries bullseye)"

DEBS=(python2.7 python2.7-minimal libpython2.7 libpython2.7-stdlib
      libpython2.7-minimal libpython2.7-dev python2.7-dev libssl1.1 libffi7)
log "apt-get download ${DEBS[*]}"
rm -f "$DL/debs"/*.deb
(cd "$DL/debs" && apt-get "${APT_OPTS[@]}" download -qq "${DEBS[@]}") \
    || die "apt-get download of the Python 2.7 packages failed"
for deb in "$DL/debs"/*.deb; do
    dpkg -x "$deb" "$PREFIX"
done

MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
if [[ -z "$MULTIARCH" || ! -d "$PREFIX/usr/lib/$MULTIARCH" ]]; then
    MULTIARCH=$(cd "$PREFIX/usr/lib" && find . -maxdepth 1 -name '*-linux-gnu*' -printf '%f\n' | head -n1)
fi
[[ -n "$MULTIARCH" && -d "$PREFIX/usr/lib/$MULTIARCH" ]] || die "cannot find the multiarch lib dir under $PREFIX/usr/lib"
PY27_LIBDIR="$PREFIX/usr/lib/$MULTIARCH"
PY27=("$PREFIX/usr/bin/python2.7")
py27() {
    env -u PYTHONHOME PYTHONNOUSERSITE=1 \
        LD_LIBRARY_PATH="$PY27_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "${PY27[@]}" "$@"
}
py27 -c 'import sys, ssl, ctypes, zlib; sys.stdout.write("%s (%s)\n" % (sys.version.split()[0], ssl.OPENSSL_VERSION))' \
    | sed 's/^/[autobahn-setup] python2.7 works: /' >&2 \
    || die "the unpacked python2.7 does not run"

# ---------------------------------------------------------------- 2. pip for 2.7
log "downloading pip/setuptools/wheel for Python 2.7"
rm -f "$DL/wheels"/*.whl
"$PY3" -m pip download -q --no-deps --only-binary=:all: --python-version 2.7 \
    --dest "$DL/wheels" pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 \
    || die "pip download of pip/setuptools/wheel for 2.7 failed"
PIP_WHL=$(ls "$DL/wheels"/pip-20.3.4-*.whl)
log "installing pip 20.3.4 into $VENV"
PYTHONPATH="$PIP_WHL" py27 -m pip install -q --no-warn-script-location --no-python-version-warning --no-index --prefix "$VENV" "$DL/wheels"/*.whl \
    || die "installing pip for 2.7 failed"

SITEPKG="$VENV/lib/python2.7/site-packages"
[[ -d "$SITEPKG" ]] || die "expected $SITEPKG after pip install --prefix"
cat > "$SITE/sitecustomize.py" <<PYEOF
# Generated by tether conformance/setup.sh: make the private site-packages a
# real site dir, so its .pth files (zope namespace package) are processed.
import site
site.addsitedir('$SITEPKG')
PYEOF
py27env() { PYTHONPATH="$SITE" py27 "$@"; }
py27env -m pip --version | sed 's/^/[autobahn-setup] /' >&2

# ---------------------------------------------------------------- 3. the suite
log "downloading autobahntestsuite==$AUTOBAHN_VERSION (sdist)"
rm -rf "$DL/sdist"/*
py27env -m pip download -q --no-python-version-warning --no-deps --no-binary=:all: --dest "$DL/sdist" \
    "autobahntestsuite==$AUTOBAHN_VERSION" \
    || die "pip download of autobahntestsuite==$AUTOBAHN_VERSION failed"
SDIST=$(find "$DL/sdist" -maxdepth 1 -name "autobahntestsuite-$AUTOBAHN_VERSION.*" | head -n1)
[[ -n "$SDIST" && -f "$SDIST" ]] || die "sdist not found in $DL/sdist"
REQS_SRC=$(tar -tzf "$SDIST" | grep -E '^[^/]+/autobahntestsuite\.egg-info/requires\.txt$' | head -n1) \
    || die "no egg-info/requires.txt in $SDIST"
# Keep the plain pinned requirements; drop setuptools (we pin 44.1.1 for 2.7)
# and any [extras] sections.
tar -xzOf "$SDIST" "$REQS_SRC" \
    | awk '/^\[/ { exit } NF && $0 !~ /^setuptools([<>=!~ ]|$)/' > "$DL/requirements.txt"
log "pinned requirements: $(tr '\n' ' ' < "$DL/requirements.txt")"

log "installing requirements (wsaccel compiles a C extension)"
CFLAGS="-I$PREFIX/usr/include/python2.7 -I$PREFIX/usr/include${CFLAGS:+ $CFLAGS}" \
    py27env -m pip install -q --no-warn-script-location --no-python-version-warning --prefix "$VENV" -r "$DL/requirements.txt" \
    || die "installing the autobahntestsuite requirements failed"
log "installing autobahntestsuite $AUTOBAHN_VERSION"
py27env -m pip install -q --no-warn-script-location --no-python-version-warning --no-deps --prefix "$VENV" "$SDIST" \
    || die "installing autobahntestsuite failed"

# ---------------------------------------------------------------- 4. wrapper
cat > "$H/bin/wstest" <<'WEOF'
#!/usr/bin/env bash
# Generated by tether conformance/setup.sh: runs Autobahn|Testsuite's wstest
# with the private Python 2.7 in the directory above this script.
set -euo pipefail
H="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unset PYTHONHOME
export PYTHONNOUSERSITE=1
export PYTHONPATH="$H/site"
export LD_LIBRARY_PATH="$H/py27/usr/lib/@MULTIARCH@${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$H/py27/usr/bin/python2.7" -c "import sys; from autobahntestsuite.wstest import run; sys.argv[0]='wstest'; run()" "$@"
WEOF
sed -i "s|@MULTIARCH@|$MULTIARCH|" "$H/bin/wstest"
chmod +x "$H/bin/wstest"

log "smoke test: importing the suite"
PYTHONPATH="$SITE" py27 -c 'import autobahntestsuite, autobahn, twisted, wsaccel; from autobahntestsuite.wstest import run' \
    || die "smoke test failed: autobahntestsuite does not import"
"$H/bin/wstest" --help >/dev/null 2>&1 || die "smoke test failed: '$H/bin/wstest --help' exited non-zero"

echo "$MARKER_CONTENT" > "$MARKER"
log "done in $(( $(date +%s) - START ))s: $H/bin/wstest"
