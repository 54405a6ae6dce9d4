#!/usr/bin/env bash
# Bundle Leaflet with the web page of `ftfsearch serve`, so the page works offline (no CDN).
#
# Fetches leaflet@1.9.4 from the npm registry with `npm pack` at build time, checks the
# tarball's sha256 against the pinned value (a changed upload is refused), and installs the
# files the page needs (leaflet.js, leaflet.css, images/, LICENSE) into
# <repo>/ftfsearch/web/static/vendor/leaflet/ (gitignored; the Makefile `venv` target runs this).
#
# Usage: scripts/get-leaflet.sh [--from FILE.tgz]
#   --from FILE.tgz   use an already downloaded leaflet-1.9.4.tgz instead of running `npm pack`
#                     (for machines without registry access).
# Idempotent: does nothing when the installed copy carries the pinned version stamp.
set -euo pipefail

PKG="leaflet"
VERSION="1.9.4"
SHA256="84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/ftfsearch/web/static/vendor/leaflet"
STAMP="$DEST/.version"

FROM=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from) FROM="${2:?--from needs a .tgz file}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "get-leaflet.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION $SHA256" && -f "$DEST/leaflet.js" ]]; then
    echo "leaflet $VERSION already installed at $DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

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
NEW="$DEST.tmp.$$"
rm -rf "$NEW"
mkdir -p "$NEW/images"
cp "$TMP/package/dist/leaflet.js" "$TMP/package/dist/leaflet.css" "$TMP/package/LICENSE" "$NEW/"
cp "$TMP/package/dist/images/"*.png "$NEW/images/"
echo "$VERSION $SHA256" > "$NEW/.version"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$NEW" "$DEST"
echo "installed leaflet $VERSION at $DEST"
