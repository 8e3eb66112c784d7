"""The pure parts of the training loop: the learning-rate schedule and the running means of the metrics."""

import math
from itertools import pairwise

import pytest
import torch

from trainer.config import TrainConfig
from trainer.train import RunningMeans, lr_at

PEAK = 1e-3


def schedule(name: str, warmup: int, steps: int):
    config = TrainConfig.model_construct(learning_rate=PEAK, lr_scheduler=name, lr_warmup_steps=warmup, max_train_steps=steps)
    return [lr_at(config, step) for step in range(1, steps + 1)]


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_the_warmup_rises_linearly_to_the_peak_and_the_schedule_starts_there(name):
    lrs = schedule(name, warmup=4, steps=20)
    assert lrs[:4] == pytest.approx([PEAK / 4, PEAK / 2, 3 * PEAK / 4, PEAK])  # step 1 already trains
    assert lrs[4] == pytest.approx(PEAK)  # the first step after the warmup is the schedule's peak


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup"])
def test_constant_schedules_without_warmup_are_constant_from_step_one(name):
    assert schedule(name, warmup=0, steps=100) == [PEAK] * 100


@pytest.mark.parametrize("warmup", [0, 5])
def test_linear_decays_evenly_and_its_last_step_still_trains(warmup):
    lrs = schedule("linear", warmup=warmup, steps=25)
    decay = lrs[warmup:]
    assert decay[0] == pytest.approx(PEAK)
    assert decay[-1] == pytest.approx(PEAK / len(decay))
    assert [a - b for a, b in pairwise(decay)] == pytest.approx([PEAK / len(decay)] * (len(decay) - 1))


@pytest.mark.parametrize("warmup", [0, 5])
def test_cosine_follows_half_a_cosine_and_its_last_step_still_trains(warmup):
    lrs = schedule("cosine", warmup=warmup, steps=25)
    n = 25 - warmup
    assert lrs[warmup:] == pytest.approx([PEAK * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)])
    assert 0 < lrs[-1] < lrs[-2]


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_a_one_step_run_trains_at_the_peak(name):
    assert schedule(name, warmup=0, steps=1) == [PEAK]


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [10, 15])
def test_a_warmup_as_long_as_the_run_or_longer_is_all_warmup(name, warmup):
    assert schedule(name, warmup=warmup, steps=10) == pytest.approx([PEAK * step / warmup for step in range(1, 11)])


def test_running_means_are_kept_by_name_and_reset_after_each_read():
    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0), "grad_norm": torch.tensor(4.0)})
    means.add({"loss": torch.tensor(3.0), "grad_norm": torch.tensor(2.0)})
    assert means.steps == 2
    assert means.read() == {"loss": 2.0, "grad_norm": 3.0}
    assert means.steps == 0
    means.add({"loss": torch.tensor(5.0), "grad_norm": torch.tensor(1.0)})
    assert means.read() == {"loss": 5.0, "grad_norm": 1.0}  # the earlier interval is gone


def test_running_means_take_values_that_carry_gradients():
    weight = torch.ones((), requires_grad=True)
    means = RunningMeans()
    means.add({"loss": weight * 2})
    means.add({"loss": weight * 4})
    assert means.read() == {"loss": 3.0}


def test_a_step_with_other_metrics_than_the_earlier_ones_is_refused():
    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="differ from the earlier steps"):
        means.add({"diffusion_loss": torch.tensor(1.0)})
