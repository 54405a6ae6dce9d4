"""STAC items, catalogs and collections as scenes: pystac reads the JSON, GDAL the assets.

``ftfsearch ingest ITEM.json`` (or a catalog or collection, a file or an http(s) URL) makes each
STAC item one scene. Its RGB pixels are, in this order of preference: the assets named by
``assets`` (``--assets``: one RGB asset, or red, green and blue ones); the item's ``visual``
asset; an asset whose bands include red, green and blue (NAIP publishes one ``image`` asset of
red, green, blue and near-infrared: its red, green and blue bands are read, by their place in its
band list); three single-band assets whose band common names (``eo:bands``, or STAC 1.1 ``bands``
with ``eo:common_name``) are red, green and blue, stacked through a VRT on the finest band's grid
(:func:`ingest.stack.stack_vrt`). Asset
hrefs are resolved against the item's location; http(s) assets are read in place through
``/vsicurl/``, as COG URLs are.

The item's ``datetime`` (else ``start_datetime``) is the scene's acquisition time; its id
(made a safe scene id) names the scene; its id, collection and a few properties (cloud cover,
GSD, platform, constellation, instruments) are kept with the scene under ``extra["stac"]``.
A scene's fingerprint is that of its one asset, or of its VRT (which records each band's
fingerprint), so a re-run finds the same scenes and resumes them.

A catalog or collection is walked through its ``item`` and ``child`` links, each object read
once (a link loop back to a catalog above is refused by name). Everything is read before any
scene is written: a catalog that is not STAC, or loops, leaves the store unchanged. An item that
cannot be used (no RGB assets, a datetime that is not a date, unreadable) fails alone, as a bad
file does, when the pipeline reaches it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.eo import EOExtension
from pystac.stac_io import DefaultStacIO
from pystac.utils import str_to_datetime

from ftfsearch.errors import BadInput
from ftfsearch.raster import is_url
from ftfsearch.store.base import SceneRecord
from ftfsearch.times import iso_utc
from ingest.remote import fetch_text
from ingest.scenes import default_scene_id, fingerprint, safe_id
from ingest.stack import stack_vrt

RGB = ("red", "green", "blue")
VISUAL = "visual"
"""The asset key STAC's best practices give a true-colour image."""
KEPT_PROPERTIES = ("eo:cloud_cover", "gsd", "platform", "constellation", "instruments")
"""Item properties stored with the scene (under their names without the ``eo:`` prefix)."""
_WHAT_TO_GIVE = "give a STAC item, catalog or collection (JSON)"


class StacReader(DefaultStacIO):
    """pystac's reader, with http(s) read like every other remote file (timeouts, retries) and
    failures as :class:`BadInput` naming the href."""

    def read_text_from_href(self, href: str) -> str:
        if is_url(href):
            return fetch_text(href)
        try:
            return super().read_text_from_href(href)
        except FileNotFoundError as exc:
            raise BadInput(f"{href}: no such file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{href}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc


@dataclass(frozen=True)
class StacScene:
    """One STAC item to ingest: where its RGB pixels are, its scene id, time and properties (an
    :class:`ingest.sources.Source`).

    Plain data (it travels to the ``serve`` holding the store as a dict); ``error`` is why the
    item cannot be ingested, raised when the pipeline reaches it.
    """

    href: str
    """The item's location, named in messages."""
    scene_id: str
    stack_dir: str
    assets: tuple[tuple[str, str], ...] = ()
    """``(key, absolute href)``: one RGB asset, or the red, green and blue ones."""
    bands: tuple[int, int, int] | None = None
    """1-based red, green and blue bands of the one asset, from its band list (None: the raster's
    own colour interpretation, or a stack of three)."""
    acquired: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __str__(self) -> str:
        return self.href

    @property
    def key(self) -> str:
        return self.href

    def raster(self) -> Path | str:
        """The raster the scene is tiled from: the one asset, or the VRT of the three (written
        once per distinct stack). Raises :class:`BadInput` naming the item and the asset."""
        return self.open()[0]

    def is_scene(self, record: SceneRecord) -> bool:
        """The record of this item: its stored STAC href is this one."""
        return (record.extra.get("stac") or {}).get("href") == self.href

    def to_json(self) -> dict[str, Any]:
        return self.to_dict()

    def open(self) -> tuple[Path | str, str | None]:
        """:meth:`raster` and, for one asset, its fingerprint, taken here so that a missing asset
        is this item's one-line error before any write (and the pipeline need not take it again)."""
        if self.error is not None:
            raise BadInput(self.error)
        try:
            if len(self.assets) == 1:
                href = self.assets[0][1]
                fp = fingerprint(href)
                return (href if is_url(href) else Path(href)), fp
            keys = ",".join(k for k, _ in self.assets)
            sources: list[Path | str] = [h if is_url(h) else Path(h) for _, h in self.assets]
            return stack_vrt(sources, Path(self.stack_dir), f"{self.href}: assets {keys}", name=self.scene_id), None
        except BadInput as exc:
            message = exc.message  # its parameters still marked: the CLI names them as flags
            raise BadInput(message if message.startswith(self.href) else f"{self.href}: {message}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StacScene":
        bands = d.get("bands")
        return cls(**{**d, "assets": tuple((str(k), str(h)) for k, h in d.get("assets") or ()),
                      "bands": tuple(int(b) for b in bands) if bands else None})


def read_stac(href: str, stack_dir: Path, assets: tuple[str, ...] | None = None,
              limit: int | None = None) -> list[StacScene]:
    """The scenes of a STAC item, or of the items a catalog or collection links to (at most
    ``limit``). Raises :class:`BadInput` naming ``href`` when it is not STAC JSON, cannot be
    read, or a catalog's links loop; an unusable item comes back with its ``error``."""
    reader = StacReader()
    href = href if is_url(href) else str(Path(href).expanduser().absolute())
    d = _read_json(reader, href)
    if d.get("type") == "Feature":
        return [_item_scene(reader, href, d, stack_dir, assets)]
    if d.get("type") == "FeatureCollection":
        return _item_collection(reader, href, d, stack_dir, assets, limit)
    root = _stac_object(reader, href, d)
    if not isinstance(root, pystac.Catalog):
        raise BadInput(f"{href}: not a STAC item, catalog or collection; {_WHAT_TO_GIVE}")
    return _Walk(reader, stack_dir, assets, limit).run(root, href)


def _item_collection(reader: StacReader, href: str, d: dict[str, Any], stack_dir: Path,
                     assets: tuple[str, ...] | None, limit: int | None) -> list[StacScene]:
    """The items of an ItemCollection (a saved STAC API search): each item is its ``self`` link,
    else ``<file>#<item id>``; its relative asset hrefs resolve against the file."""
    features = d.get("features")
    if not isinstance(features, list):
        raise BadInput(f"{href}: a FeatureCollection without a features list; {_WHAT_TO_GIVE}")
    scenes: list[StacScene] = []
    for i, feature in enumerate(features[:limit] if limit is not None else features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise BadInput(f"{href}: feature {i} is not a STAC item; {_WHAT_TO_GIVE}")
        own = next((str(link.get("href")) for link in feature.get("links") or []
                    if isinstance(link, dict) and link.get("rel") == "self" and link.get("href")), None)
        name = f"{href}#{feature.get('id', i)}"
        try:
            scene = _item_scene(reader, own or href, feature, stack_dir, assets)
        except BadInput as exc:  # this item fails alone, when the pipeline reaches it
            scenes.append(StacScene(href=own or name, scene_id=safe_id(str(feature.get("id") or i)),
                                    stack_dir=str(stack_dir), error=exc.message))
            continue
        scenes.append(scene if own else replace(scene, href=name, properties={**scene.properties, "href": name}))
    return scenes


def item_scene(href: str, d: dict[str, Any], stack_dir: Path, assets: tuple[str, ...] | None = None) -> StacScene:
    """An item read elsewhere (a page of a STAC API search) as a scene, chosen as any other item's;
    an unusable one comes back with its ``error`` and fails alone when the pipeline reaches it."""
    try:
        return _item_scene(StacReader(), href, d, stack_dir, assets)
    except BadInput as exc:
        return StacScene(href=href, scene_id=default_scene_id(href), stack_dir=str(stack_dir), error=exc.message)


class _Walk:
    """Items of a catalog tree, each object read once; a child link back up is a loop."""

    def __init__(self, reader: StacReader, stack_dir: Path, assets: tuple[str, ...] | None,
                 limit: int | None) -> None:
        self.reader, self.stack_dir, self.assets, self.limit = reader, stack_dir, assets, limit
        self.scenes: list[StacScene] = []
        self.seen: set[str] = set()

    def full(self) -> bool:
        return self.limit is not None and len(self.scenes) >= self.limit

    def run(self, root: pystac.Catalog, href: str) -> list[StacScene]:
        self.seen.add(href)
        self._visit(root, (href,))
        return self.scenes

    def _visit(self, catalog: pystac.Catalog, chain: tuple[str, ...]) -> None:
        for link in catalog.get_links(pystac.RelType.ITEM):
            href = _link_href(link, chain[-1])
            if self.full():
                return
            if href not in self.seen:
                self.seen.add(href)
                self.scenes.append(self._item(href))
        for link in catalog.get_links(pystac.RelType.CHILD):
            href = _link_href(link, chain[-1])
            if href in chain:
                raise BadInput(
                    f"{chain[-1]}: its child link leads back to {'itself' if href == chain[-1] else href}, a "
                    "link loop; remove that link (each catalog is the child of one above it)"
                )
            if self.full():
                return
            if href in self.seen:  # reached twice, not a loop: its items are already listed
                continue
            self.seen.add(href)
            child = _stac_object(self.reader, href, _read_json(self.reader, href))
            if not isinstance(child, pystac.Catalog):
                raise BadInput(f"{href}: a child link of {chain[-1]} is not a STAC catalog or collection")
            self._visit(child, chain + (href,))

    def _item(self, href: str) -> StacScene:
        try:
            return _item_scene(self.reader, href, _read_json(self.reader, href), self.stack_dir, self.assets)
        except BadInput as exc:  # this item fails alone, when the pipeline reaches it
            return StacScene(href=href, scene_id=default_scene_id(href), stack_dir=str(self.stack_dir),
                             error=exc.message)


def _link_href(link: pystac.Link, owner: str) -> str:
    href = link.get_absolute_href()
    if not href:
        raise BadInput(f"{owner}: a {link.rel} link has no href; fix the catalog")
    return href


def _read_json(reader: StacReader, href: str) -> dict[str, Any]:
    text = reader.read_text(href)
    try:
        d = reader.json_loads(text)
    except ValueError as exc:
        raise BadInput(f"{href}: not STAC JSON (not JSON: {str(exc)[:80]}); {_WHAT_TO_GIVE}") from exc
    if not isinstance(d, dict):
        raise BadInput(f"{href}: not STAC JSON (not a JSON object); {_WHAT_TO_GIVE}")
    return d


def _stac_object(reader: StacReader, href: str, d: dict[str, Any]) -> pystac.STACObject:
    try:
        return reader.stac_object_from_dict(d, href=href, preserve_dict=False)
    except (pystac.STACTypeError, pystac.STACError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BadInput(f"{href}: not STAC JSON ({reason}); {_WHAT_TO_GIVE}") from exc


def _item_time(href: str, d: dict[str, Any]) -> str | None:
    """The item's ``datetime``, else its ``start_datetime``, as ISO 8601 UTC (pystac's parser:
    RFC 3339, what STAC requires)."""
    properties = d.get("properties")
    for key in ("datetime", "start_datetime"):
        value = properties.get(key) if isinstance(properties, dict) else None
        if value is None:
            continue
        try:
            return iso_utc(str_to_datetime(value))
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadInput(
                f"{href}: {key} {str(value)[:60]!r} is not a date; STAC needs RFC 3339 such as "
                "2024-05-03T10:22:11Z: fix the item"
            ) from exc
    return None


def _item_scene(reader: StacReader, href: str, d: dict[str, Any], stack_dir: Path,
                assets: tuple[str, ...] | None) -> StacScene:
    acquired = _item_time(href, d)  # before pystac, which would fail on it in its own words
    item = _stac_object(reader, href, d)
    if not isinstance(item, pystac.Item):
        raise BadInput(f"{href}: an item link leads to a STAC {type(item).__name__.lower()}, not an item")
    chosen, bands = _rgb_assets(item, href, assets)
    kept = {k.removeprefix("eo:"): item.properties[k] for k in KEPT_PROPERTIES if item.properties.get(k) is not None}
    return StacScene(
        href=href, scene_id=safe_id(item.id), stack_dir=str(stack_dir),
        assets=tuple((k, _asset_href(item, k, href)) for k in chosen), bands=bands, acquired=acquired,
        properties={"item": item.id, "collection": item.collection_id, "href": href,
                    "assets": list(chosen), **kept},
    )


def _asset_href(item: pystac.Item, key: str, href: str) -> str:
    absolute = item.assets[key].get_absolute_href()
    if not absolute:
        raise BadInput(f"{href}: asset {key!r} has no href; fix the item")
    return absolute


def _band_names(asset: pystac.Asset) -> list[str | None]:
    """Common names of an asset's bands: ``eo:bands`` through pystac's EO extension, else STAC
    1.1's ``bands`` (``eo:common_name``), which pystac does not expose yet."""
    try:
        bands = EOExtension.ext(asset).bands
    except pystac.ExtensionNotImplemented:
        bands = None
    if bands is not None:
        return [b.common_name for b in bands]
    raw = asset.extra_fields.get("bands")
    if isinstance(raw, list):
        return [b.get("eo:common_name") if isinstance(b, dict) else None for b in raw]
    return []


def _rgb_assets(item: pystac.Item, href: str,
                given: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[int, int, int] | None]:
    """The keys of the item's RGB assets: ``given``, ``visual``, one asset whose bands include
    red, green and blue (with those bands' 1-based places when it has others), or three
    single-band assets by common name."""
    assets = item.assets
    have = ", ".join(sorted(assets)) or "none"
    if given:
        missing = [k for k in given if k not in assets]
        if missing:
            raise BadInput(f"`assets` {','.join(given)!r}: {href}: item {item.id!r} has no asset {missing[0]!r} "
                           f"(its assets: {have})")
        return given, None
    if VISUAL in assets:
        return (VISUAL,), None
    names = {key: _band_names(asset) for key, asset in sorted(assets.items())}
    whole = [key for key, n in names.items() if tuple(n) == RGB]
    if whole:
        return (whole[0],), None
    # one asset holding red, green and blue among others (NAIP: red, green, blue, nir)
    holding = [key for key, n in names.items() if all(n.count(c) == 1 for c in RGB)]
    if holding:
        n = names[holding[0]]
        return (holding[0],), (n.index("red") + 1, n.index("green") + 1, n.index("blue") + 1)
    single = {n[0]: key for key, n in reversed(names.items()) if len(n) == 1 and n[0] in RGB}
    if all(c in single for c in RGB):
        return tuple(single[c] for c in RGB), None
    raise BadInput(
        f"`assets`: {href}: item {item.id!r} has no {VISUAL!r} asset and no red, green and blue band assets "
        f"(eo:bands common names); give the keys of its red, green and blue assets (its assets: {have})"
    )
