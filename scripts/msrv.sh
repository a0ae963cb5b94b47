#!/usr/bin/env bash
# MSRV check, by building: every workspace crate is checked
# (`cargo +VERSION check --all-features --locked`) with the Rust its
# `rust-version` declares, installed with rustup (minimal profile) when
# missing. The libraries (tether-proto, tether, tether-hub, tether-bench)
# share the workspace's rust-version; tether-yjs and tether-cli declare a
# newer one of their own, because yrs needs a newer Rust (if-let guards)
# without declaring it. (A check of declared rust-versions alone missed
# that; a build does not.)
#
# Also: the toolchain that runs the rest of CI must be at least the highest
# rust-version declared; a group whose rust-version is that toolchain's is
# left to the normal build.
#
#   scripts/msrv.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --no-deps --locked > "$meta"
# "VERSION crate crate..." per declared rust-version, oldest first.
groups=$(python3 - "$meta" "$(rustc --version)" <<'PY'
import json, re, sys
ver = lambda v: tuple(int(x) for x in re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", v).groups(default="0"))
meta = json.load(open(sys.argv[1]))
groups = {}
for p in meta["packages"]:
    if not p.get("rust_version"):
        sys.exit(f"msrv: {p['name']} declares no rust-version")
    groups.setdefault(p["rust_version"], []).append(p["name"])
installed = re.search(r"rustc (\d+\.\d+\.\d+)", sys.argv[2]).group(1)
newest = max(groups, key=ver)
if ver(installed) < ver(newest):
    sys.exit(f"msrv: {sys.argv[2]} is older than the rust-version {newest} of {', '.join(groups[newest])}")
for v in sorted(groups, key=ver):
    # The Rust running CI is this version: the rest of CI builds these.
    same = ver(installed)[:2] == ver(v)[:2]
    print(v, "same" if same else "other", *sorted(groups[v]))
PY
)
while read -r version which crates; do
  if [[ $which == same ]]; then
    echo "msrv: $crates: rust-version $version is the Rust this CI runs ($(rustc --version)); the workspace build checks them" >&2
    continue
  fi
  if ! rustup run "$version" rustc --version >/dev/null 2>&1; then
    echo "msrv: installing Rust $version (rustup, minimal profile)" >&2
    rustup toolchain install "$version" --profile minimal --no-self-update >&2
  fi
  args=()
  for c in $crates; do args+=(-p "$c"); done
  echo "msrv: cargo +$version check ${args[*]} --all-features --locked" >&2
  # A target directory of its own: another rustc's artifacts would only be rebuilt over.
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/msrv-$version cargo "+$version" check "${args[@]}" --all-features --locked --quiet
  echo "msrv: Rust $version builds $crates" >&2
done <<<"$groups"
