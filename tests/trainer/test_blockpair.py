"""The suggested pair: the paper's 8 → 16 of 28 scaled to the depth, and valid for every family's models."""

import pytest

from trainer.blockpair import suggest_for_model, suggest_pair
from trainer.checks import resolve_block_index
from trainer.families import FAMILIES, model_depth, supported_families

# the configs of the families' tiny test models, as far as the block count and the pair check read them
# (their depths are asserted in tests/trainer/families); the UNet's is tests/trainer/families/tiny_unet.py's
TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "transformer_layers_per_block": [1, 2],
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
TINY_DEPTHS = {"ace_step": 4, "auraflow": 5, "chroma": 4, "cosmos": 4, "flux": 4, "flux2": 4, "hidream": 4,
               "hunyuan_video": 4, "kandinsky5_image": 4, "kandinsky5_video": 4, "longcat": 4, "ltxvideo": 4,
               "lumina2": 4, "omnigen": 4, "pixart_sigma": 4, "qwen_image": 3, "sana": 4, "sd3": 4, "wan": 4,
               "z_image": 3}


def tiny_model(name: str) -> tuple[dict, int]:
    family = FAMILIES[name]
    if name == "demo":
        return dict(family.builtin_config), model_depth(family, None)
    if family.count_blocks is not None:
        return TINY_UNET, family.count_blocks(TINY_UNET)
    return {}, TINY_DEPTHS[name]


def test_every_supported_family_has_a_tiny_model_here():
    assert sorted(TINY_DEPTHS) == sorted(n for n in supported_families() if n != "demo" and not FAMILIES[n].count_blocks)


@pytest.mark.parametrize("name", supported_families())
def test_the_suggestion_is_a_valid_pair_for_every_familys_tiny_model(name):
    family = FAMILIES[name]
    config, depth = tiny_model(name)
    student, teacher = suggest_for_model(family, config, depth, resolution=64)
    assert 1 <= student < teacher <= depth
    s, t = resolve_block_index(student, depth, "student"), resolve_block_index(teacher, depth, "teacher")
    assert (s, t) == (student - 1, teacher - 1)  # the numbers mean the blocks the user counts
    if family.check_pair is not None:
        assert family.check_pair(config, s, t, 64) is None


def test_the_unet_pair_sits_in_one_level():
    # levels of the tiny UNet's 11 blocks: 0 | 1 1 | 1 1 (mid) | 1 1 1 1 | 0 0; the paper's scaled pair is 3 → 6
    assert suggest_for_model(FAMILIES["sdxl"], TINY_UNET, 11, resolution=64) == (3, 6)
    levels = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    # the student's ideal is block 3; with block 1 (level 0) as the only choice it pairs inside level 0
    assert suggest_pair(11, lambda s, t: levels[s - 1] == levels[t - 1] and s in (1, 10)) == (1, 10)


def test_the_papers_pair_for_the_papers_depth():
    assert suggest_pair(28) == (8, 16)


@pytest.mark.parametrize("depth", range(5, 101))
def test_the_teacher_stays_out_of_the_last_fifth_with_a_clear_gap(depth):
    student, teacher = suggest_pair(depth)
    assert teacher <= 0.8 * depth
    assert teacher - student >= max(1, round(depth / 7))
    assert abs(student - depth / 3.5) <= 1 and abs(teacher - depth / 1.75) <= 1


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_a_shallow_model_gets_the_best_pair_it_has(depth):
    student, teacher = suggest_pair(depth)
    assert 1 <= student < teacher <= depth


def test_no_pair_when_none_can_be_compared():
    assert suggest_pair(1) is None
    assert suggest_pair(6, lambda s, t: False) is None
