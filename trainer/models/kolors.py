"""Kolors: SDXL's UNet (blocks, levels, predict and VAE latents as in trainer/models/sdxl.py) with a ChatGLM3
text encoder, encoded as KolorsPipeline encodes prompts: the penultimate hidden states (B, 256, 4096), which
the UNet projects itself (encoder_hid_proj), and the last layer's final token as the pooled embedding.

The ChatGLM encoder and tokenizer ship inside diffusers (diffusers.pipelines.kolors) and load from the local
pipeline directory like any other component; no remote code is needed.
"""

import torch

from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation, sdxl

# Kolors' noise schedule (Kwai-Kolors/Kolors-diffusers scheduler/scheduler_config.json): SDXL's shape, but
# 1100 training steps to beta 0.014; used when the model directory holds no scheduler
STANDARD_SCHEDULER = {
    "num_train_timesteps": 1100, "beta_start": 0.00085, "beta_end": 0.014, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
MAX_SEQUENCE_LENGTH = 256  # KolorsPipeline's ChatGLM length


def scheduler_config(config: TrainConfig) -> dict:
    return sdxl.scheduler_config(config, STANDARD_SCHEDULER)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, device=pipe._execution_device, do_classifier_free_guidance=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    embeds, pooled = sdxl.zero_empty(pipe, prompts, [embeds, pooled])  # Kolors ships with it off: "" is encoded
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
            "add_time_ids": sdxl.add_time_ids(len(prompts), config)}


SPEC = PipelineSpec(
    pipeline_class="KolorsPipeline", encode_prompts=encode_prompts, encode_media=sdxl.encode_media,
    generate=sdxl.generate, model_component="unet", text_components=("text_encoder", "tokenizer"),
)

FAMILY = FamilyImplementation(
    load_model=sdxl.load_model, blocks=sdxl.blocks, predict=sdxl.predict, load_data=pipeline_data(SPEC),
    sample=pipeline_sampler(SPEC), objective="ddpm", ddpm_scheduler_config=scheduler_config,
    lora_target_modules=sdxl.FAMILY.lora_target_modules,
)
