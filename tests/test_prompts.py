"""Class prompts: every scene label of the real caption sets has everyday words, in one table."""

from __future__ import annotations

import pytest

from _data import require_shared_data
from ftfsearch.errors import BadInput
from ftfsearch.training.datasets import load_dataset
from ftfsearch.training.prompts import CLASS_PHRASES, has_phrase, normalise_label, phrase_for, prompts_for


@pytest.mark.parametrize("name", ["rsicd", "ucm"])
def test_every_label_of_the_caption_sets_has_a_phrase(name: str) -> None:
    ds = load_dataset(require_shared_data(name, f"dataset_{name}.json"))
    labels = {im.label for im in ds.images if im.label is not None}
    assert len(labels) == {"rsicd": 31, "ucm": 21}[name]
    assert sorted(label for label in labels if not has_phrase(label)) == []
    for label in labels:
        prompts = prompts_for(label)
        assert prompts[0] == phrase_for(label) and len(set(prompts)) == len(prompts) > 1
        assert all(phrase_for(label) in p for p in prompts)


def test_spellings_of_one_class_share_a_phrase_and_unknown_labels_say_where_to_add_them() -> None:
    assert normalise_label("Storage_Tanks") == normalise_label("storage tanks") == "storagetanks"
    assert phrase_for("storage tanks") == phrase_for("storagetanks") == CLASS_PHRASES["storagetanks"]
    assert phrase_for("parking") == phrase_for("parkinglot") == "a parking lot"
    with pytest.raises(BadInput, match="volcano.*CLASS_PHRASES"):
        phrase_for("volcano")
