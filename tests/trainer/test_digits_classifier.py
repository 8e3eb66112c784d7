"""The demo's sample-quality measure: a digit classifier that reads real digits and not noise."""

import pytest
import torch

from tests.utils.factories import fast_config
from trainer.config import validate_config
from trainer.digits_classifier import CHANCE, accuracy, held_out_accuracy
from trainer.events import read_events
from trainer.train import train


def test_the_classifier_reads_real_held_out_digits():
    assert held_out_accuracy(16) > 0.9


def test_on_noise_the_classifier_is_near_chance():
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand((1000, 1, 16, 16), generator=generator) * 2 - 1
    labels = torch.arange(10).repeat(100)
    assert abs(accuracy(noise, labels) - CHANCE) < 0.06


@pytest.mark.slow
def test_a_demo_run_logs_sample_accuracy_beside_the_validation_loss(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = validate_config(fast_config(tiny_model_dir, out, max_train_steps=2, validation_steps=2,
                                         checkpointing_steps=0))
    assert train(config, out) == 0
    validations = [e for e in read_events(out) if e["event"] == "metric" and "val_diffusion_loss" in e]
    assert validations and all(0 <= e["sample_accuracy"] <= 1 for e in validations)
