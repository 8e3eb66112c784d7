"""Small factories for tests: tiny demo models saved as real local directories, and configs."""

import json
from pathlib import Path

SEED_SNIPPET = {
    "layersync_enabled": True,
    "layersync_student_block": 8,
    "layersync_teacher_block": 16,
    "layersync_lambda": 0.2,
}


def make_tiny_demo_model(
    directory: Path, num_layers: int = 16, hidden_size: int = 32, sample_size: int = 16, perturb: float = 0.0, seed: int = 0
) -> Path:
    """A DemoDiT small enough to train in milliseconds a step, saved with save_pretrained.

    The same arguments give the same weights, whatever ran before. ``perturb`` adds noise to every
    weight, so the blocks no longer start as the identity (adaLN-Zero) and differ from each other."""
    import torch

    from trainer.models.demo_dit import DemoDiT

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DemoDiT(sample_size=sample_size, hidden_size=hidden_size, num_layers=num_layers, num_attention_heads=2)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=generator))
    model.save_pretrained(directory)
    return Path(directory)


def fast_config(model_dir: Path, output_dir: Path, **overrides) -> dict:
    """The reference snippet on a tiny model, with a short schedule."""
    config = dict(
        SEED_SNIPPET,
        pretrained_model_name_or_path=str(model_dir),
        output_dir=str(output_dir),
        max_train_steps=12,
        train_batch_size=8,
        logging_steps=2,
        validation_steps=6,
        validation_num_inference_steps=2,
        checkpointing_steps=6,
    )
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path
