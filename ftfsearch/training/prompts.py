"""Everyday words for the scene classes of the caption datasets, in one place.

RSICD and UCM-Captions label every image with a scene class (``label`` in ``dataset_*.json``:
RSICD's 31 spellings such as ``storage tanks``, UCM's 21 such as ``storagetanks``). Analysts type
"a parking lot", not ``parkinglot``; training uses :func:`prompts_for` as extra positives and the
``generalise`` benchmark queries :func:`phrase_for`, so both speak the same words.
"""

from __future__ import annotations

from ftfsearch.errors import BadInput

CLASS_PHRASES: dict[str, str] = {
    "airport": "an airport",
    "bareland": "bare land",
    "baseballfield": "a baseball field",
    "beach": "a beach",
    "bridge": "a bridge over water",
    "center": "a city centre",
    "church": "a church",
    "commercial": "a commercial area",
    "denseresidential": "a dense residential area",
    "desert": "a desert",
    "farmland": "farmland",
    "forest": "a forest",
    "industrial": "an industrial area",
    "meadow": "a meadow",
    "mediumresidential": "a residential area",
    "mountain": "mountains",
    "park": "a park",
    "parking": "a parking lot",
    "playfields": "sports fields",
    "playground": "a playground with a running track",
    "pond": "a pond",
    "port": "a harbor with boats",
    "railwaystation": "a railway station",
    "resort": "a resort",
    "river": "a river",
    "school": "a school",
    "sparseresidential": "scattered houses",
    "square": "a city square",
    "stadium": "a stadium",
    "storagetanks": "storage tanks",
    "viaduct": "a viaduct",
    "agricultural": "farmland",
    "airplane": "airplanes at an airport",
    "baseballdiamond": "a baseball field",
    "buildings": "buildings",
    "chaparral": "shrubland",
    "freeway": "a freeway",
    "golfcourse": "a golf course",
    "harbor": "a harbor with boats",
    "intersection": "a road intersection",
    "mobilehomepark": "a mobile home park",
    "overpass": "a highway overpass",
    "parkinglot": "a parking lot",
    "runway": "an airport runway",
    "tenniscourt": "a tennis court",
}
"""Normalised scene label -> the words a user would type for it."""

TEMPLATES: tuple[str, ...] = ("{phrase}", "an aerial image of {phrase}", "a satellite photo of {phrase}")
"""How a phrase becomes a prompt; the bare phrase first, since that is what users type."""


def normalise_label(label: str) -> str:
    """``"storage tanks"``, ``"Storage_Tanks"`` and ``"storagetanks"`` are one class."""
    return "".join(ch for ch in label.lower() if ch.isalnum())


def has_phrase(label: str) -> bool:
    """Whether :data:`CLASS_PHRASES` knows ``label`` (other datasets' classes may not be there)."""
    return normalise_label(label) in CLASS_PHRASES


def phrase_for(label: str) -> str:
    """The everyday phrase for a dataset label; an unknown label is a :class:`BadInput`."""
    key = normalise_label(label)
    if key not in CLASS_PHRASES:
        raise BadInput(f"scene label `{label}` has no everyday phrase: add it to CLASS_PHRASES in ftfsearch/training/prompts.py")
    return CLASS_PHRASES[key]


def prompts_for(label: str) -> list[str]:
    """Class prompts for a dataset label, one per template (the bare phrase first)."""
    phrase = phrase_for(label)
    return [t.format(phrase=phrase) for t in TEMPLATES]
