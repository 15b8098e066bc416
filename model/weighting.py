"""How a training step weighs its targets (no torch import: the CLI lists the choices).

Why it matters is in ``model.steps``.
"""

from enum import StrEnum


class TargetWeighting(StrEnum):
    STEP = "step"  # each step's mean: a target weighs 1 / its step's targets
    EQUAL = "equal"  # each step's sum over the epoch's mean targets per step
