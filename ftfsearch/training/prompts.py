"""Class prompts: the everyday words for the scene classes of the caption sets.

RSICD and UCM-Captions carry a scene ``label`` per image. Training adds prompts built from it as extra
positives ("an aerial image of a parking lot"), which teaches the words analysts type and that the
captions use unevenly; the generalisation bench retrieves test images with the same phrases.
"""

from __future__ import annotations

CLASS_PHRASES: dict[str, str] = {
    # RSICD (30 classes; the file spells some with spaces)
    "airport": "an airport",
    "bare land": "bare land",
    "baseball field": "a baseball field",
    "beach": "a beach",
    "bridge": "a bridge over water",
    "center": "a city centre",
    "church": "a church",
    "commercial": "a commercial area",
    "dense residential": "a dense residential area",
    "desert": "a desert",
    "farmland": "farmland",
    "forest": "a forest",
    "industrial": "an industrial area",
    "meadow": "a meadow",
    "medium residential": "a residential area",
    "mountain": "mountains",
    "park": "a park",
    "parking": "a parking lot",
    "playfields": "sports fields",
    "playground": "a playground with a running track",
    "pond": "a pond",
    "port": "a harbor with boats",
    "railway station": "a railway station",
    "resort": "a resort",
    "river": "a river",
    "school": "a school",
    "sparse residential": "scattered houses",
    "square": "a city square",
    "stadium": "a stadium",
    "storage tanks": "storage tanks",
    "viaduct": "a viaduct",
    # UC Merced (21 classes, written as one word)
    "agricultural": "farmland",
    "airplane": "airplanes at an airport",
    "baseballdiamond": "a baseball field",
    "buildings": "buildings",
    "chaparral": "shrubland",
    "denseresidential": "a dense residential area",
    "freeway": "a freeway",
    "golfcourse": "a golf course",
    "harbor": "a harbor with boats",
    "intersection": "a road intersection",
    "mediumresidential": "a residential area",
    "mobilehomepark": "a mobile home park",
    "overpass": "a highway overpass",
    "parkinglot": "a parking lot",
    "runway": "an airport runway",
    "sparseresidential": "scattered houses",
    "storagetanks": "storage tanks",
    "tenniscourt": "a tennis court",
}

TEMPLATES: tuple[str, ...] = ("{phrase}", "an aerial image of {phrase}", "a satellite photo of {phrase}")


def phrase_for(label: str) -> str:
    """The everyday phrase of a class label (the label itself when the table has none)."""
    return CLASS_PHRASES.get(label, CLASS_PHRASES.get(label.replace(" ", ""), label))


def prompts_for(label: str | None) -> list[str]:
    """The class prompts of an image's label (none without a label)."""
    if not label:
        return []
    phrase = phrase_for(label)
    return [t.format(phrase=phrase) for t in TEMPLATES]
