"""Build the QGIS plugin's zip (``make qgis-plugin``): ``qgis_plugin/ftfsearch_qgis`` as one top
folder, the layout QGIS's "Install from ZIP" takes. Byte-identical for the same sources (sorted
entries, fixed times), stdlib only, so any Python >= 3.9 builds it.

    python scripts/build_qgis_plugin.py [--out dist/ftfsearch_qgis.zip]
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "qgis_plugin" / "ftfsearch_qgis"
DEFAULT_OUT = REPO / "dist" / "ftfsearch_qgis.zip"
SHIPPED = (".py", ".txt", ".svg")
"""Sources, metadata and the icon; no caches, no editor files."""


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*") if p.is_file() and p.suffix in SHIPPED and "__pycache__" not in p.parts)


def metadata() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PLUGIN / "metadata.txt", encoding="utf-8")
    return parser


def build_zip(out: Path) -> Path:
    """Write the zip and return its path; refuse metadata without the fields QGIS's installer reads."""
    general = metadata()["general"]
    missing = [k for k in ("name", "version", "qgisMinimumVersion", "description", "author", "icon")
               if not general.get(k, "").strip()]
    if missing:
        raise SystemExit(f"{PLUGIN / 'metadata.txt'}: missing {', '.join(missing)}")
    if not (PLUGIN / general["icon"]).is_file():
        raise SystemExit(f"{PLUGIN / 'metadata.txt'}: icon {general['icon']!r} is not in {PLUGIN}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in plugin_files():
            info = zipfile.ZipInfo(f"{PLUGIN.name}/{path.relative_to(PLUGIN).as_posix()}", (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = build_zip(ap.parse_args().out)
    print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
