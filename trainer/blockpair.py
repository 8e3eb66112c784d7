"""Which student and teacher blocks to start from, by the paper's rules; torch-free, so the server can ask.

The paper's SiT-XL/2 (28 blocks) aligns block 8 to block 16. Scaled to a model's depth that puts the
student near 2/7 of the depth and the teacher near 4/7, with two more rules from the paper's choices:
the teacher stays out of the last ~20 % of the blocks, and a clear gap separates the two (the
similarity of neighbouring blocks is high from the start, so pulling one toward the next asks little).
Blocks are numbered from 1, as the user counts them.
"""

from collections.abc import Callable

from trainer.families import Family

PAPER_DEPTH, PAPER_STUDENT, PAPER_TEACHER = 28, 8, 16
LAST_BLOCKS_FRACTION = 0.2  # the teacher stays out of this share of the deepest blocks
MIN_GAP_FRACTION = 1 / 7  # a clear gap: at least 4 blocks of 28, scaled (and at least 1)


def suggest_pair(depth: int, valid: Callable[[int, int], bool] = lambda s, t: True) -> tuple[int, int] | None:
    """(student, teacher), 1-based, for a model of ``depth`` blocks; ``valid(student, teacher)`` says which
    pairs the model can compare at all (a UNet: both at the same level). None when no pair is valid.

    The rules are ranked: a teacher out of the last blocks first, then a clear gap, then closeness to
    the paper's pair scaled to the depth. A model too shallow for every rule gets the best pair it has."""
    ideal_student, ideal_teacher = depth * PAPER_STUDENT / PAPER_DEPTH, depth * PAPER_TEACHER / PAPER_DEPTH
    deepest_teacher = int(depth * (1 - LAST_BLOCKS_FRACTION))
    min_gap = max(1, round(depth * MIN_GAP_FRACTION))

    def rank(pair: tuple[int, int]) -> tuple:
        student, teacher = pair
        return (teacher > deepest_teacher, teacher - student < min_gap,
                abs(student - ideal_student) + abs(teacher - ideal_teacher), student)

    pairs = [(s, t) for s in range(1, depth + 1) for t in range(s + 1, depth + 1) if valid(s, t)]
    return min(pairs, key=rank) if pairs else None


def suggest_for_model(family: Family, model_config: dict, depth: int, resolution: int | None) -> tuple[int, int] | None:
    """The suggested pair for a model of ``family`` whose config.json is ``model_config``: only pairs its
    own pair check accepts (a UNet's levels)."""
    if family.check_pair is None:
        return suggest_pair(depth)
    return suggest_pair(depth, lambda s, t: family.check_pair(model_config, s - 1, t - 1, resolution or 0) is None)
