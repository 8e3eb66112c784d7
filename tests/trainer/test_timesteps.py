"""Each family's timesteps and loss weighting (trainer/timesteps.py, trainer/objectives.py): the densities'
moments, the shifts, defaults from the scheduler config, min-SNR values, offset noise, and the config rules."""

import json
import math

import pytest
import torch

from trainer.config import ConfigError, TrainConfig, validate_config
from trainer.families import FAMILIES
from trainer.objectives import DDPM, FlowMatching
from trainer.timesteps import FlowTimesteps, flow_timesteps, image_seq_len, min_snr_weights, offset_noise

N = 200_000


def draw(schedule: FlowTimesteps, shape=None, seed=0) -> torch.Tensor:
    return schedule.sample(N, torch.Generator().manual_seed(seed), "cpu", shape)


def test_uniform_timesteps_are_the_generators_own_uniform_draw():
    # the demo (and every run that keeps the default) draws exactly what it drew before: pairing and old runs hold
    sigma = FlowMatching().timesteps(8, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(sigma, torch.rand(8, generator=torch.Generator().manual_seed(3)))


def test_logit_normal_timesteps_have_the_asked_mean_and_std_in_logit_space():
    sigma = draw(FlowTimesteps(weighting_scheme="logit_normal", logit_mean=0.5, logit_std=0.8))
    logit = torch.log(sigma / (1 - sigma))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)
    assert 0 < sigma.min() and sigma.max() < 1


def test_mode_timesteps_follow_the_mode_density():
    u = torch.rand(N, generator=torch.Generator().manual_seed(0))
    expected = 1 - u - 1.29 * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    sigma = draw(FlowTimesteps(weighting_scheme="mode", mode_scale=1.29))
    assert torch.allclose(sigma, expected)
    assert sigma.mean().item() == pytest.approx(0.5, abs=0.005)  # symmetric about 1/2
    middle = ((sigma > 0.25) & (sigma < 0.75)).float().mean().item()
    assert middle > 0.6  # a positive scale puts more weight on the middle than uniform's 0.5


def test_a_fixed_shift_moves_the_timesteps_toward_noise_as_the_scheduler_shifts_its_sigmas():
    sigma = draw(FlowTimesteps(shift=3.0))
    # E[3u / (1 + 2u)] for uniform u = 1.5 - 0.75 ln 3; the median is 3·0.5 / (1 + 2·0.5) = 0.75
    assert sigma.mean().item() == pytest.approx(1.5 - 0.75 * math.log(3), abs=0.003)
    assert sigma.median().item() == pytest.approx(0.75, abs=0.005)
    assert torch.equal(draw(FlowTimesteps(shift=1.0)), draw(FlowTimesteps(shift=0.0)))  # both unshifted


def test_the_resolution_shift_follows_the_batchs_token_count():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    schedule = FlowTimesteps(auto_shift=True, patch=2)
    small, large = (1, 16, 32, 32), (1, 16, 128, 128)
    assert image_seq_len(small, 2) == 256 and image_seq_len(large, 2) == 4096
    for shape in (small, large):
        mu = calculate_shift(image_seq_len(shape, 2), 256, 4096, 0.5, 1.15)
        # u = 1/2 maps to exp(mu) / (exp(mu) + 1): the median of the shifted draw
        assert draw(schedule, shape).median().item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), abs=0.005)
    assert draw(schedule, large).mean() > draw(schedule, small).mean()  # larger images train at more noise
    with pytest.raises(ValueError, match="latent shape"):
        draw(schedule)
    assert image_seq_len((1, 128, 5, 16, 16), 1) == 5 * 16 * 16  # video latents: frames × height × width
    assert image_seq_len((1, 64, 250), 2) == 250  # audio latents: one token per latent frame


def _pipeline_dir(tmp_path, scheduler: dict | None):
    (tmp_path / "transformer").mkdir(parents=True)
    if scheduler is not None:
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return str(tmp_path)


def _config(path, **keys) -> TrainConfig:
    return TrainConfig.model_construct(pretrained_model_name_or_path=path, **keys)


def test_unset_keys_take_the_models_scheduler_config(tmp_path):
    sd3 = _pipeline_dir(tmp_path / "sd3", {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert (flow_timesteps(_config(sd3)).shift, flow_timesteps(_config(sd3)).auto_shift) == (3.0, False)
    assert flow_timesteps(_config(sd3, flow_schedule_shift=1.0)).shift == 1.0  # the config wins
    flux = _pipeline_dir(tmp_path / "flux", {"shift": 3.0, "use_dynamic_shifting": True, "base_image_seq_len": 256,
                                             "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15})
    schedule = flow_timesteps(_config(flux))
    assert schedule.auto_shift and (schedule.base_seq_len, schedule.max_shift) == (256, 1.15)
    assert "shifted by resolution" in schedule.describe()
    assert not flow_timesteps(_config(flux, flow_schedule_auto_shift=False)).auto_shift
    # a component folder given directly reads the scheduler beside it; no scheduler (and the demo): unshifted
    assert flow_timesteps(_config(str(tmp_path / "sd3" / "transformer"))).shift == 3.0
    sana = _pipeline_dir(tmp_path / "sana", {"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 3.0})
    assert flow_timesteps(_config(sana)).shift == 3.0  # the multistep flow schedulers call it flow_shift
    bare = flow_timesteps(_config(_pipeline_dir(tmp_path / "bare", None)))
    assert (bare.shift, bare.auto_shift) == (1.0, False)
    demo = flow_timesteps(validate_config({}))
    assert (demo.weighting_scheme, demo.shift, demo.auto_shift) == ("uniform", 1.0, False)


def test_the_tiny_flux_pipelines_scheduler_is_unshifted(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "pipe" / "scheduler")
    schedule = flow_timesteps(_config(str(tmp_path / "pipe")))
    assert (schedule.shift, schedule.auto_shift) == (1.0, False)


STANDARD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_are_min_snr_gamma_over_the_targets_snr(prediction):
    objective = DDPM(dict(STANDARD, prediction_type=prediction), "cpu", snr_gamma=5.0)
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = objective.scheduler.alphas_cumprod[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    expected = {"epsilon": snr.clamp(max=5) / snr, "v_prediction": snr.clamp(max=5) / (snr + 1),
                "sample": snr.clamp(max=5)}[prediction]
    weights = min_snr_weights(objective.scheduler, t, 5.0, prediction)
    assert torch.allclose(weights.double(), expected, rtol=1e-5)
    if prediction == "epsilon":
        assert weights[0] < 0.05 and weights[-1] == pytest.approx(1.0)  # the low-noise steps are damped, not the noisy ones
    pred, target = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    per_example = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert objective.loss(pred, target, t).item() == pytest.approx((per_example * weights).mean().item(), rel=1e-6)
    plain = DDPM(dict(STANDARD, prediction_type=prediction), "cpu")
    assert torch.equal(plain.loss(pred, target, t), torch.nn.functional.mse_loss(pred, target))


def test_offset_noise_shifts_each_example_and_channel_by_one_value():
    noise = torch.zeros(3, 4, 8, 8)
    shifted = offset_noise(noise, 0.1, torch.Generator().manual_seed(0))
    assert shifted.shape == noise.shape
    assert torch.equal(shifted, shifted[:, :, :1, :1].expand_as(shifted))  # constant over the pixels
    assert 0 < shifted.abs().max() < 0.5
    assert torch.equal(shifted, offset_noise(noise, 0.1, torch.Generator().manual_seed(0)))  # from the generator only
    assert offset_noise(noise, 0.0, torch.Generator()) is noise
    latents = torch.zeros(2, 4, 8, 8)
    objective = FlowMatching(noise_offset=0.1)
    a = objective.noise(latents, torch.Generator().manual_seed(1))
    assert torch.equal(a, objective.noise(latents, torch.Generator().manual_seed(1)))


def _problems(**keys) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate_config(keys)
    return {key: message for key, message in info.value.errors}


def test_keys_of_the_other_objective_are_refused_with_what_to_use(tmp_path):
    sdxl = _problems(model_family="sdxl", pretrained_model_name_or_path=str(tmp_path), instance_data_dir=str(tmp_path),
                     weighting_scheme="logit_normal", flow_schedule_shift=3.0, flow_schedule_auto_shift=True)
    for key in ("weighting_scheme", "flow_schedule_shift", "flow_schedule_auto_shift"):
        assert "trains with DDPM noise" in sdxl[key] and "snr_gamma" in sdxl[key]
    flux = _problems(model_family="flux", pretrained_model_name_or_path=str(tmp_path), instance_data_dir=str(tmp_path),
                     snr_gamma=5.0, validation_resolution=100)
    assert "flow matching" in flux["snr_gamma"] and "weighting_scheme" in flux["snr_gamma"]
    assert "96 or 112" in flux["validation_resolution"]
    assert "training resolution 16" in _problems(validation_resolution=32)["validation_resolution"]


def test_the_demo_accepts_the_flow_keys_and_each_familys_objective_agrees_with_its_implementation():
    config = validate_config({"weighting_scheme": "logit_normal", "flow_schedule_shift": 3.0, "noise_offset": 0.05})
    assert config.weighting_scheme == "logit_normal"
    from trainer.models import implementation

    for name, family in FAMILIES.items():
        if family.unsupported is None:
            assert implementation(name).objective == family.objective, name


def test_a_shift_beside_the_resolution_shift_is_told_to_be_ignored():
    from trainer.checks import config_notices

    notes = dict(config_notices({"flow_schedule_auto_shift": True, "flow_schedule_shift": 3.0}))
    assert "flow_schedule_shift is ignored" in notes["flow_schedule_shift"]
    assert "flow_schedule_shift" not in dict(config_notices({"flow_schedule_shift": 3.0}))


def test_the_cli_takes_the_resolution_shift_as_a_bare_flag_or_a_value():
    from trainer.cli import config_from_args

    assert config_from_args(["--flow_schedule_auto_shift"])[0]["flow_schedule_auto_shift"] == "true"
    assert config_from_args(["--flow-schedule-auto-shift", "false"])[0]["flow_schedule_auto_shift"] == "false"
