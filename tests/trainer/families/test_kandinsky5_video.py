"""Kandinsky 5 video: the visual blocks of a tiny transformer trained from an encoded dataset."""

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.families import FAMILIES, model_depth


def kandinsky5_transformer(directory, visual_cond=False):
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(0)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=8, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=4, axes_dims=(4, 2, 2), visual_cond=visual_cond,
    )
    model.save_pretrained(directory)
    return directory


def text_cond(n: int) -> tuple[dict, dict]:
    """Qwen embeddings zero-padded after each prompt's length, CLIP pooled: (examples, empty prompt)."""
    torch.manual_seed(1)
    lengths = torch.tensor([3, 5, 7, 9, 11, 2][:n] + [2])
    embeds = torch.randn(n + 1, 16, 16) * (torch.arange(16) < lengths[:, None])[..., None]
    cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": torch.randn(n + 1, 8), "prompt_lengths": lengths}
    return {k: v[:n] for k, v in cond.items()}, {k: v[n:] for k, v in cond.items()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return kandinsky5_transformer(tmp_path_factory.mktemp("kandinsky5_video") / "transformer")


def encoded(folder, n=4):
    cond, null = text_cond(n)
    return write_encoded_dataset(folder, torch.randn(n, 4, 2, 4, 4), cond, null_cond=null)  # (C, T', H', W')


def test_depth_counts_the_visual_blocks_only(model_dir):
    assert model_depth(FAMILIES["kandinsky5_video"], str(model_dir)) == 4


def test_layersync_reaches_the_student_and_compares_frames_of_patches(model_dir, tmp_path):
    data = encoded(tmp_path / "data")
    result = check_layersync_gradients("kandinsky5_video", model_dir, data, tmp_path, student=2, teacher=4)
    assert result["student"] == result["teacher"] == (2, 2, 4, 32)  # 2 latent frames of 2×2 patches


def test_predict_calls_the_model_as_the_pipeline_does(model_dir):
    from diffusers import Kandinsky5Transformer3DModel

    from trainer.models.kandinsky5_video import predict

    model = Kandinsky5Transformer3DModel.from_pretrained(model_dir)
    cond, _ = text_cond(2)  # prompts of 3 and 5 tokens, stored padded to 16
    x, sigma = torch.randn(2, 4, 2, 4, 4), torch.tensor([0.3, 0.7])
    # the pipeline: channels-last latents, the batch's text as long as its longest prompt, sigma × 1000,
    # rope positions per post-patch axis, and the (1, 3.16, 3.16) rope scale below 480 px
    expected = model(
        hidden_states=x.permute(0, 2, 3, 4, 1), encoder_hidden_states=cond["prompt_embeds"][:, :5],
        timestep=sigma * 1000, pooled_projections=cond["pooled_prompt_embeds"], visual_rope_pos=[torch.arange(2)] * 3,
        text_rope_pos=torch.arange(5), scale_factor=(1, 3.16, 3.16), return_dict=False,
    ).permute(0, 4, 1, 2, 3)
    assert torch.allclose(predict(model, x, sigma, cond), expected)


def test_an_image_to_video_model_trains_with_gradient_checkpointing(tmp_path):
    model_dir = kandinsky5_transformer(tmp_path / "i2v", visual_cond=True)  # takes latents, a condition and a mask
    train_few_steps("kandinsky5_video", model_dir, encoded(tmp_path / "data"), tmp_path / "run", 1, 3,
                    gradient_checkpointing=True)
