#!/usr/bin/env bash
# Refresh the copy of Leaflet that ships inside the package (the map of `ftfsearch serve`).
#
# Leaflet is vendored: ftfsearch/web/static/vendor/leaflet/ is committed and goes into the wheel as
# package data, so `pip install .` alone gives a page whose map works, offline (no CDN, no npm at
# install time). This script is what produced that copy, and what a maintainer runs to move the pin:
# it fetches leaflet@$VERSION from the npm registry with `npm pack`, refuses a tarball whose sha256
# is not the pinned one, and replaces the vendored directory with the files the page needs
# (leaflet.js, leaflet.css, images/*.png, the BSD-2-Clause LICENSE), plus VERSION and SHA256SUMS
# (the files' digests, which tests/test_wheel.py checks offline). Review and commit the result.
#
# Usage: scripts/get-leaflet.sh [--from FILE.tgz]
#   --from FILE.tgz   use an already downloaded leaflet-$VERSION.tgz instead of running `npm pack`
#                     (for machines without registry access).
set -euo pipefail

PKG="leaflet"
VERSION="1.9.4"
SHA256="84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/ftfsearch/web/static/vendor/leaflet"

FROM=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from) FROM="${2:?--from needs a .tgz file}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "get-leaflet.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

TMP="$(mktemp -d)"
NEW="$DEST.tmp.$$"
trap 'rm -rf "$TMP" "$NEW"' EXIT  # a half-built copy must not stay in the package's static files

if [[ -n "$FROM" ]]; then
    [[ -f "$FROM" ]] || { echo "get-leaflet.sh: no such file $FROM" >&2; exit 1; }
    TGZ="$FROM"
else
    command -v npm >/dev/null || { echo "get-leaflet.sh: npm is needed to fetch $PKG@$VERSION (or pass --from FILE.tgz)" >&2; exit 1; }
    (cd "$TMP" && npm pack --silent "$PKG@$VERSION" >/dev/null)
    TGZ="$TMP/$PKG-$VERSION.tgz"
fi

GOT="$(sha256sum "$TGZ" | cut -d' ' -f1)"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "get-leaflet.sh: sha256 of $TGZ is $GOT, expected $SHA256; refusing to install" >&2
    exit 1
fi

tar -xzf "$TGZ" -C "$TMP"
rm -rf "$NEW"
mkdir -p "$NEW/images"
cp "$TMP/package/dist/leaflet.js" "$TMP/package/dist/leaflet.css" "$TMP/package/LICENSE" "$NEW/"
cp "$TMP/package/dist/images/"*.png "$NEW/images/"
echo "$PKG $VERSION, npm tarball sha256 $SHA256" > "$NEW/VERSION"
(cd "$NEW" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$NEW" "$DEST"
echo "vendored $PKG $VERSION at $DEST: review and commit it"
