"""PixArt Sigma: a tiny pipeline directory built offline (T5), the whole way from an image folder to a
sample, DDPM with the pipeline's own scheduler config, and the learned-sigma half left out of the loss."""

import pytest
import torch

from tests.trainer.families.pipeline_checks import train_from_an_image_folder_twice, transformer_calls
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import t5_text_encoder, t5_tokenizer, vae
from trainer.config import validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models import pixart_sigma
from trainer.objectives import objective_for

LAYERS, INNER, T5_DIM = 4, 16, 32


def transformer():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(  # out_channels = 2 × in: epsilon and the learned variance, as PixArt ships
        sample_size=8, num_layers=LAYERS, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=T5_DIM, in_channels=4, cross_attention_dim=INNER, out_channels=8,
    )


def pixart_pipeline(directory, scheduler=None):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline(
        transformer=transformer(), scheduler=scheduler or DPMSolverMultistepScheduler(), vae=vae(latent_channels=4),
        text_encoder=t5_text_encoder(d_model=T5_DIM), tokenizer=t5_tokenizer(),
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory):
    return pixart_pipeline(tmp_path_factory.mktemp("pixart") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Latents as encode_media stores them (B, 4, H/2, W/2), T5 embeddings and their mask (shortened)."""
    torch.manual_seed(1)
    mask = torch.zeros(4, 12, dtype=torch.long)
    mask[:, :5] = 1
    cond = {"prompt_embeds": torch.randn(4, 12, T5_DIM), "prompt_attention_mask": mask}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="pixart_sigma")


def test_the_blocks_are_the_dit_blocks_counted_from_the_config(pixart_dir):
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel.from_pretrained(pixart_dir / "transformer")
    assert model_depth(FAMILIES["pixart_sigma"], str(pixart_dir)) == len(pixart_sigma.blocks(model)) == LAYERS


def test_predict_gives_the_transformer_what_the_pipeline_gives_it_and_keeps_the_epsilon_half(pixart_dir):
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(pixart_dir, local_files_only=True)
    calls = transformer_calls(pipe, prompt="a red square", height=16, width=16, num_inference_steps=2,
                              guidance_scale=1.0, use_resolution_binning=False, output_type="latent")
    inputs, expected = calls[1]
    t = pipe.scheduler.timesteps[1].expand(1)
    assert torch.equal(inputs["timestep"], t)  # integer timesteps, passed as they are
    with torch.no_grad():
        cond = pixart_sigma.encode_prompts(pipe, ["a red square"], None)
        got = pixart_sigma.predict(pipe.transformer, inputs["hidden_states"], t, cond)
    assert expected.shape[1] == 8 and got.shape[1] == 4
    torch.testing.assert_close(got, expected[:, :4])


def test_the_ddpm_schedule_is_the_pipelines_own_or_pixarts_standard_one(tmp_path):
    from diffusers import DDPMScheduler

    v_scheduler = DDPMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear")
    pipeline_dir = pixart_pipeline(tmp_path / "v", v_scheduler)
    bare_dir = tmp_path / "bare"
    transformer().save_pretrained(bare_dir)

    def objective(model_dir):
        config = validate_config(dict(model_family="pixart_sigma", pretrained_model_name_or_path=str(model_dir),
                                      instance_data_dir=str(tmp_path)))
        return objective_for(pixart_sigma.FAMILY, config, torch.device("cpu"))

    # the pipeline directory and its transformer/ folder both read scheduler/scheduler_config.json
    for model_dir in (pipeline_dir, pipeline_dir / "transformer"):
        assert objective(model_dir).prediction_type == "v_prediction"
    # a bare transformer falls back to the linear-beta epsilon schedule PixArt ships
    standard = objective(bare_dir)
    assert standard.prediction_type == "epsilon" and standard.num_train_timesteps == 1000
    assert standard.alphas_cumprod[-1].item() == pytest.approx(DDPMScheduler().alphas_cumprod[-1].item())


def test_layersync_compares_the_image_tokens(pixart_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("pixart_sigma", pixart_dir, encoded, tmp_path, student=1, teacher=3)
    assert shapes["student"] == shapes["teacher"] == (2, 16, INNER)


def test_full_training_with_gradient_checkpointing(pixart_dir, encoded, tmp_path):
    events = train_few_steps("pixart_sigma", pixart_dir, encoded, tmp_path / "run", 2, 4, gradient_checkpointing=True)
    assert (tmp_path / "run" / "checkpoints" / "step_0000003" / "transformer" / "config.json").is_file()
    assert all(e["diffusion_loss"] > 0 for e in events if e["event"] == "metric" and "loss" in e)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(pixart_dir, tmp_path):
    train_from_an_image_folder_twice("pixart_sigma", pixart_dir, tmp_path, resolution=16)


def test_a_model_of_another_family_is_refused_with_the_family_to_choose(tmp_path):
    from diffusers import SanaTransformer2DModel

    other = SanaTransformer2DModel(num_layers=1, num_attention_heads=2, attention_head_dim=4, caption_channels=8,
                                   num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8)
    other.save_pretrained(tmp_path / "m")
    config = validate_config(dict(model_family="pixart_sigma", pretrained_model_name_or_path=str(tmp_path / "m"),
                                  instance_data_dir=str(tmp_path)))
    refusal = "holds a SanaTransformer2DModel, but this model family trains a PixArtTransformer2DModel"
    with pytest.raises(ValueError, match=refusal):
        pixart_sigma.load_model(config)
