"""Where a new item's embedding row starts when the fine-tune job grows the vocabulary (no torch
import: the settings list the choices). What each does is in ``model.finetune.grow_vocabulary``.
"""

from enum import StrEnum


class NewItemInit(StrEnum):
    CONTEXT = "context"  # from the users who clicked it (``model.finetune.item_contexts``)
    MEAN = "mean"  # the mean of the known items' rows, plus noise


# The manifest field (under "extra") of a fine-tuned checkpoint listing the items added by its
# last few versions, newest last, one list per version. A fresh item's row has learned from a
# click or two, and it scores like a popular item for many users: a fresh item is not ranked
# with the others (by the worker, nor by the fine-tune job's gate) but offered in the worker's
# fresh slot, until its clicks have trained it for a few versions.
FRESH_ITEMS = "fresh_items"


def _fresh_lists(manifest: dict) -> list[list[str]]:
    fresh: list[list[str]] = manifest.get("extra", {}).get(FRESH_ITEMS, [])
    return fresh


def fresh_items(manifest: dict) -> list[str]:
    """The items a checkpoint's manifest marks as fresh (none for a trained checkpoint)."""
    return [item for added in _fresh_lists(manifest) for item in added]


def carry_fresh(parent: dict, added: list[str], versions: int) -> list[list[str]]:
    """The ``FRESH_ITEMS`` of a version fine-tuned from ``parent``'s manifest that adds
    ``added``: the items added by the last ``versions`` versions, this one included."""
    if versions <= 0:
        return []
    return [*_fresh_lists(parent), list(added)][-versions:]


def add_fresh(parent: dict, added: list[str], versions: int) -> list[list[str]]:
    """The ``FRESH_ITEMS`` of a version that adds ``added`` to ``parent``'s weights unchanged
    (a rejected candidate's new items alone): they join the newest list, so only versions whose
    weights were trained age fresh items, and the version ranks exactly what its parent did."""
    if versions <= 0:
        return []
    lists = _fresh_lists(parent)
    return [*lists[:-1], [*lists[-1], *added]] if lists else [list(added)]
