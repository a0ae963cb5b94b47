#!/usr/bin/env bash
# Build the user guide (guide/ -> target/guide/) with mdbook, and fail on what
# mdbook only warns about: an {{#include}} of a file (or anchor) that is not
# there, a page missing from SUMMARY.md, a relative link to a page or file
# that does not exist. (mdbook 0.5.4 logs a missing include as ERROR and
# exits 0, and says nothing of a missing anchor.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
mdbook build guide >"$log" 2>&1 || status=$?
cat "$log" >&2
if [[ $status != 0 ]] || grep -Eq 'ERROR|WARN' "$log"; then
    echo "guide: mdbook reported errors or warnings (above)" >&2
    exit 1
fi
python3 - <<'PY'
import pathlib, re, sys
src = pathlib.Path("guide/src")
bad = []
for page in src.rglob("*.md"):
    text = page.read_text()
    # Includes: mdbook leaves nothing behind for a missing file, so check here.
    for m in re.finditer(r"\{\{#(?:include|rustdoc_include)\s+([^}:\s]+)(?::([A-Za-z_][\w-]*))?[^}]*\}\}", text):
        target = (page.parent / m.group(1)).resolve()
        if not target.is_file():
            bad.append(f"{page}: include of missing {m.group(1)}")
        elif m.group(2) and f"ANCHOR: {m.group(2)}" not in target.read_text():
            bad.append(f"{page}: include of missing anchor {m.group(1)}:{m.group(2)}")
    # Relative links to pages and files.
    for m in re.finditer(r"\]\(([^)\s#]+)(#[^)]*)?\)", text):
        link = m.group(1)
        if re.match(r"[a-z]+:", link):
            continue
        if not (page.parent / link).resolve().exists():
            bad.append(f"{page}: link to missing {link}")
summary = (src / "SUMMARY.md").read_text()
listed = {(src / p).resolve() for p in re.findall(r"\]\(([^)]+\.md)\)", summary)}
for page in src.rglob("*.md"):
    if page.name != "SUMMARY.md" and page.resolve() not in listed:
        bad.append(f"{page}: not in SUMMARY.md")
out = pathlib.Path("target/guide")
for html in out.rglob("*.html"):
    if "{{#" in html.read_text(errors="replace"):
        bad.append(f"{html}: an unexpanded {{{{#...}}}} directive")
if not (out / "index.html").is_file():
    bad.append("target/guide/index.html was not written")
for b in bad:
    print("guide:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo "guide: built in target/guide/ ($(find target/guide -name '*.html' | wc -l) pages)" >&2
