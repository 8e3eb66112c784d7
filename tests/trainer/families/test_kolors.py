"""Kolors: SDXL's UNet with the ChatGLM text encoder that ships inside diffusers, built offline (a tiny
ChatGLM and a sentencepiece tokenizer trained here), the whole way from an image folder to a sample."""

import io
import shutil

import pytest
import torch

from tests.trainer.families.tiny_unet import POOLED, tiny_unet
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import WORDS, image_folder, vae
from trainer.config import ConfigError, validate_config
from trainer.models import kolors

GLM_DIM = POOLED  # ChatGLM's width: its last token is the pooled embedding, the UNet projects its states to TEXT_DIM


def chatglm_tokenizer(folder):
    import sentencepiece
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    model = io.BytesIO()
    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=60,
                                             hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return ChatGLMTokenizer(vocab_file=str(folder / "tokenizer.model"))


def kolors_pipeline(directory):
    from diffusers import EulerDiscreteScheduler, KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    torch.manual_seed(0)
    text_encoder = ChatGLMModel(ChatGLMConfig(
        num_layers=2, padded_vocab_size=128, hidden_size=GLM_DIM, ffn_hidden_size=37, kv_channels=8,
        num_attention_heads=4, seq_length=kolors.MAX_SEQUENCE_LENGTH, multi_query_attention=True,
        multi_query_group_num=2, original_rope=True,
    ))
    with torch.no_grad():  # ChatGLM leaves weights uninitialised (whatever memory held): it expects a checkpoint
        for name, weight in text_encoder.named_parameters():
            weight.copy_(torch.ones_like(weight) if "layernorm" in name else torch.randn_like(weight) * 0.1)
    pipe = KolorsPipeline(
        unet=tiny_unet(encoder_hid_dim=GLM_DIM, encoder_hid_dim_type="text_proj"),
        vae=vae(latent_channels=4, scaling_factor=0.13025), text_encoder=text_encoder,
        tokenizer=chatglm_tokenizer(directory.parent / "sentencepiece"),
        scheduler=EulerDiscreteScheduler(**kolors.STANDARD_SCHEDULER, timestep_spacing="leading", steps_offset=1),
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def kolors_dir(tmp_path_factory):
    return kolors_pipeline(tmp_path_factory.mktemp("kolors") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    torch.manual_seed(1)
    cond = {"prompt_embeds": torch.randn(4, kolors.MAX_SEQUENCE_LENGTH, GLM_DIM),
            "pooled_prompt_embeds": torch.randn(4, GLM_DIM),
            "add_time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).repeat(4, 1)}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="kolors")


def test_predict_gives_the_unet_what_the_kolors_pipeline_gives_it(kolors_dir):
    from diffusers import KolorsPipeline

    pipe = KolorsPipeline.from_pretrained(kolors_dir, local_files_only=True)
    calls = []
    pipe.unet.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs, out[0])), with_kwargs=True)
    config = validate_config({"model_family": "kolors", "pretrained_model_name_or_path": str(kolors_dir),
                              "instance_data_dir": str(kolors_dir), "resolution": 16})
    with torch.no_grad():
        pipe(prompt="a red square", height=16, width=16, num_inference_steps=2, guidance_scale=1.0,
             output_type="latent")
        (x, t), _kwargs, expected = calls[1]
        cond = kolors.encode_prompts(pipe, ["a red square"], config)
        assert cond["prompt_embeds"].shape == (1, kolors.MAX_SEQUENCE_LENGTH, GLM_DIM)
        got = kolors.FAMILY.predict(pipe.unet, x, t.expand(1), cond)
    torch.testing.assert_close(got, expected)


def test_layersync_and_the_level_check_are_sdxls(kolors_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("kolors", kolors_dir, encoded, tmp_path, student=3, teacher=7)
    assert shapes["depth"] == 11 and shapes["student"] == shapes["teacher"] == (2, 16, 32)
    with pytest.raises(ConfigError, match="must sit at the same level of the UNet"):
        validate_config({"model_family": "kolors", "pretrained_model_name_or_path": str(kolors_dir),
                         "instance_data_dir": str(encoded), "layersync_enabled": True,
                         "layersync_student_block": 2, "layersync_teacher_block": 10})


def test_a_bare_unet_folder_trains_with_kolors_own_schedule(kolors_dir, encoded, tmp_path):
    bare = shutil.copytree(kolors_dir / "unet", tmp_path / "unet")
    config = validate_config({"model_family": "kolors", "pretrained_model_name_or_path": str(bare),
                              "instance_data_dir": str(encoded)})
    assert kolors.scheduler_config(config) == kolors.STANDARD_SCHEDULER
    train_few_steps("kolors", bare, encoded, tmp_path / "run", 10, 11, model_type="lora", lora_rank=4)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(kolors_dir, tmp_path):
    images = image_folder(tmp_path / "images", n=3)
    common = {"cache_dir": str(tmp_path / "cache"), "resolution": 16, "validation_steps": 2, "max_train_steps": 2,
                  "validation_num_inference_steps": 2, "gradient_checkpointing": True}
    events = train_few_steps("kolors", kolors_dir, images, tmp_path / "run1", 2, 4, **common)
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and (tmp_path / "run1" / samples[-1]["path"]).stat().st_size > 0
    events = train_few_steps("kolors", kolors_dir, images, tmp_path / "run2", 2, 4, **common)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "using the encoded dataset cached in" in logs and "encoding" not in logs
