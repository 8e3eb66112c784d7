"""Shared checks for the model families: train through the path a user takes, on tiny models.

``write_encoded_dataset`` writes the encoded-dataset format (what trainer/encode.py caches), so a
family whose tiny pipeline cannot be built offline still trains from a real folder on disk.
``check_layersync_gradients`` runs config → registry → capture → loss → backward and checks that
the LayerSync term reaches the student's blocks and not the teacher's; ``train_few_steps`` runs the
real training function and returns its events.
"""

from pathlib import Path

import torch

from trainer.capture import HiddenStateCapture
from trainer.config import validate_config
from trainer.encoded import save_encoded
from trainer.events import read_events
from trainer.layersync import LayerSync
from trainer.models import implementation
from trainer.objectives import objective_for
from trainer.train import train

METRIC_KEYS = {"step", "loss", "diffusion_loss", "layersync_loss", "layersync_similarity", "grad_norm", "lr", "step_time"}


def write_encoded_dataset(folder: Path, latents: torch.Tensor, cond: dict, null_cond: dict | None = None,
                          family: str = "", captions: list[str] | None = None) -> Path:
    """An encoded dataset folder: ``latents`` (N, ...) as the family's predict takes them, ``cond`` (N, ...)."""
    null_cond = null_cond if null_cond is not None else {k: torch.zeros_like(v[:1]) for k, v in cond.items()}
    captions = captions or [f"example {i}" for i in range(len(latents))]
    save_encoded(Path(folder), latents, cond, null_cond, {}, {"family": family, "captions": captions, "prompts": []})
    return Path(folder)


def family_config(family: str, model_dir: Path, data_dir: Path, output_dir: Path, student: int, teacher: int, **overrides) -> dict:
    config = dict(
        model_family=family,
        pretrained_model_name_or_path=str(model_dir),
        instance_data_dir=str(data_dir),
        output_dir=str(output_dir),
        layersync_enabled=True,
        layersync_student_block=student,
        layersync_teacher_block=teacher,
        max_train_steps=3,
        train_batch_size=2,
        logging_steps=1,
        validation_steps=0,
        checkpointing_steps=0,
        caption_dropout_probability=0.5,
        # tiny sizes, not the family's native ones: every family trains in seconds on a CPU
        resolution=16,
        num_frames=5,
    )
    config.update(overrides)
    return config


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().abs().sum().item() for p in module.parameters() if p.grad is not None]
    return float(sum(grads))


def check_layersync_gradients(family: str, model_dir: Path, data_dir: Path, tmp_path: Path, student: int, teacher: int,
                              **overrides) -> dict:
    """Only the LayerSync term is backpropagated: the student's block must get gradient, the teacher's none.
    Returns the captured shapes and the similarity."""
    config = validate_config(family_config(family, model_dir, data_dir, tmp_path / "grad-run", student, teacher, **overrides))
    device = torch.device("cpu")
    impl = implementation(config.model_family)
    data = impl.load_data(config, device, lambda *a, **k: None).to(device)
    model = impl.load_model(config).to(device)
    model.train()
    blocks = impl.blocks(model)
    layersync = LayerSync.from_config(config, len(blocks))
    objective = objective_for(impl, config, device)
    generator = torch.Generator().manual_seed(0)
    latents, cond = data.batch(2, generator)
    noise = torch.randn(latents.shape, generator=generator)
    t = objective.timesteps(2, generator, device)
    with HiddenStateCapture(blocks, layersync.blocks) as capture:
        with capture.capture() as states:
            pred = impl.predict(model, objective.noisy(latents, noise, t), t, cond)
        assert pred.shape == latents.shape, f"prediction {tuple(pred.shape)} is not shaped like the latents {tuple(latents.shape)}"
        (s, t_block), = layersync.pairs
        shapes = {"student": tuple(states[s].shape), "teacher": tuple(states[t_block].shape)}
        loss, similarity, _ = layersync(states)
        capture.release()
    model.zero_grad(set_to_none=True)
    loss.backward()
    student_grad, teacher_grad = _grad_norm(blocks[s].module), _grad_norm(blocks[t_block].module)
    assert student_grad > 0, f"the student block {s} got no gradient from LayerSync"
    assert teacher_grad == 0, f"the teacher block {t_block} got gradient {teacher_grad} from LayerSync (it must be detached)"
    return {**shapes, "similarity": similarity.item(), "depth": len(blocks)}


def train_few_steps(family: str, model_dir: Path, data_dir: Path, output_dir: Path, student: int, teacher: int,
                    **overrides) -> list[dict]:
    """The real training function, a few steps; asserts it completed and every metric event is whole."""
    config = validate_config(family_config(family, model_dir, data_dir, output_dir, student, teacher, **overrides))
    code = train(config, output_dir)
    events = read_events(output_dir)
    errors = [e for e in events if e["event"] == "error"]
    assert code == 0, f"training failed: {errors}"
    metrics = [e for e in events if e["event"] == "metric" and "loss" in e]
    assert metrics, "no metric events"
    for metric in metrics:
        missing = METRIC_KEYS - metric.keys()
        assert not missing, f"metric event lacks {missing}"
        assert metric["layersync_loss"] < 0 and -1.0001 <= metric["layersync_similarity"] <= 1.0001
    return events
