"""Where a new item's embedding row starts when the fine-tune job grows the vocabulary (no torch
import: the settings list the choices). What each does is in ``model.finetune.grow_vocabulary``.
"""

from enum import StrEnum


class NewItemInit(StrEnum):
    CONTEXT = "context"  # from the users who clicked it (``model.finetune.item_contexts``)
    MEAN = "mean"  # the mean of the known items' rows, plus noise
