#!/usr/bin/env bash
# MSRV check: the workspace's `rust-version` must be at least the highest
# `rust-version` declared by any package in Cargo.lock (as `cargo metadata`
# reports it, over every target and platform), and the installed toolchain
# must be at least the workspace's `rust-version`.
#
# What "checked" means here: older toolchains cannot be downloaded on this
# machine (no rustup downloads), so this does not build with Rust
# `rust-version` itself. It catches the failure that actually happened
# (dependencies needing a newer Rust than the workspace declared) and that
# the build in CI uses a toolchain at least that new. Where rustup can
# install toolchains, also run `cargo +MSRV check --workspace --all-features --locked`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

meta=$(mktemp)
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --locked > "$meta"
python3 - "$meta" "$(rustc --version)" <<'PY'
import json, os, re, sys

def ver(v):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", v).groups(default="0"))

meta = json.load(open(sys.argv[1]))
members = set(meta["workspace_members"])
packages = meta["packages"]
declared = {p["rust_version"] for p in packages if p["id"] in members and p.get("rust_version")}
if len(declared) != 1:
    sys.exit(f"msrv: workspace members declare {sorted(declared) or ['no']} rust-version: use rust-version.workspace = true in each")
msrv = declared.pop()
too_new = sorted(((ver(p["rust_version"]), p["name"], p["version"]) for p in packages
                  if p["id"] not in members and p.get("rust_version") and ver(p["rust_version"]) > ver(msrv)), reverse=True)
if too_new:
    print(f"msrv: the workspace declares rust-version {msrv}, but these dependencies need newer:", file=sys.stderr)
    for v, name, version in too_new:
        print(f"  {name} {version}: rust-version {'.'.join(map(str, v))}", file=sys.stderr)
    sys.exit("msrv: raise rust-version in Cargo.toml to the highest of these (or pin the dependencies down)")
rustc = sys.argv[2]
installed = re.search(r"rustc (\d+\.\d+\.\d+)", rustc).group(1)
if ver(installed) < ver(msrv):
    sys.exit(f"msrv: {rustc} is older than the workspace rust-version {msrv}")
highest = max((ver(p["rust_version"]) for p in packages if p["id"] not in members and p.get("rust_version")), default=(0,))
print(f"msrv: rust-version {msrv}; highest among dependencies {'.'.join(map(str, highest))}; installed {installed}")
PY
