"""The block map: how alike the blocks' token streams are, and how much each block changes the stream.

On a few batches of the run's own data (the family's ``load_data``, as training loads it) noised at a
few fixed levels of the family's objective, every block's stream is captured with the family's own
selector (the tokens LayerSync would compare), and the probe reports

- ``cosine[i][j]``: the per-token cosine of blocks i and j, averaged over the batches and levels;
  None where the two streams differ in shape (a UNet's levels), since LayerSync cannot pair them;
- ``update[i]``: block i's relative update ‖h_out − h_in‖ / ‖h_in‖, with h_in the stream the block
  before it gave. Block 1's input is the tokens the model hands its first block (its
  ``hidden_states`` argument, else its first positional one), taken when it has the stream's shape
  (the embedded patches, for the demo); None where it has not, and
  where two consecutive blocks' streams differ in shape;
- ``suggested``: the pair trainer.blockpair suggests among the pairs the map can compare.

Blocks are numbered from 1 in the JSON's ``suggested``; the lists are indexed from 0, block i at i−1.
"""

from collections.abc import Callable

import torch

from trainer.blockpair import suggest_pair
from trainer.blockstats import relative_update, token_cosine
from trainer.capture import HiddenStateCapture
from trainer.cli import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES, DEFAULT_NOISE_LEVELS
from trainer.config import TrainConfig
from trainer.models import implementation
from trainer.objectives import objective_for
from trainer.setup import pick_device, set_up_precision

PROBE_SEED = 0  # the probe's batches and noise: the same map for the same model and data


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    return hidden if isinstance(hidden, torch.Tensor) else None


def _levels(objective, n: int, device) -> torch.Tensor:
    """``n`` noise levels spread evenly over the objective's range, the same ones every probe uses."""
    return objective.eval_timesteps(n, device)


@torch.no_grad()
def probe(config: TrainConfig, *, batches: int = DEFAULT_BATCHES, batch_size: int = DEFAULT_BATCH_SIZE,
          noise_levels: int = DEFAULT_NOISE_LEVELS, log: Callable[..., None] = lambda *a, **k: None) -> dict:
    """The block map of the model and data ``config`` names: ``{"depth", "cosine", "update", "suggested"}``."""
    device = pick_device()
    precision = set_up_precision(config, device, log)
    impl = implementation(config.model_family)
    data = impl.load_data(config, device, log).to(device)
    model = impl.load_model(config).to(device).eval()
    objective = objective_for(impl, config, device)
    blocks = impl.blocks(model)
    depth = len(blocks)
    levels = _levels(objective, noise_levels, device)
    if config.pretrained_model_name_or_path is None:
        log("the built-in model has not been trained: a map of its initial weights (the demo's blocks start as the "
            "identity) shows how the run starts, not where it goes; set pretrained_model_name_or_path to map a "
            "trained model", "warning")

    first_inputs: list[torch.Tensor] = []
    pre_hook = blocks[0].module.register_forward_pre_hook(
        lambda module, args, kwargs: first_inputs.append(_first_input(args, kwargs)), with_kwargs=True)
    # sums on the device, read back once at the end: a probe of a deep model makes thousands of them
    cosine_sums = torch.zeros(depth, depth, device=device)
    comparable = torch.ones(depth, depth, dtype=torch.bool)
    update_sums, update_counts = torch.zeros(depth, device=device), [0] * depth
    forwards = 0
    generator = torch.Generator(device=device).manual_seed(PROBE_SEED)
    try:
        with HiddenStateCapture(blocks, range(depth)) as capture:
            for _ in range(batches):
                latents, cond = data.batch(batch_size, generator)
                noise = torch.randn(latents.shape, generator=generator, device=device)
                for level in levels:
                    t = level.expand(len(latents))
                    first_inputs.clear()
                    with precision.autocast, capture.capture() as states:
                        impl.predict(model, objective.noisy(latents, noise, t), t, cond)
                    streams = [states[i] for i in range(depth)]
                    capture.release()
                    _add_cosines(streams, cosine_sums, comparable)
                    _add_updates(first_inputs[0] if first_inputs else None, streams, update_sums, update_counts)
                    forwards += 1
    finally:
        pre_hook.remove()
    log(f"probed {depth} blocks on {forwards} forwards ({batches} batches of {batch_size} at {noise_levels} noise levels)")
    means, update_means = (cosine_sums / forwards).tolist(), (update_sums / forwards).tolist()
    cosine = [[means[i][j] if comparable[i, j] else None for j in range(depth)] for i in range(depth)]
    update = [update_means[i] if update_counts[i] == forwards else None for i in range(depth)]
    pair = suggest_pair(depth, lambda s, t: cosine[s - 1][t - 1] is not None)
    return {"depth": depth, "cosine": cosine, "update": update,
            "suggested": {"student": pair[0], "teacher": pair[1]} if pair else None}


def _add_cosines(streams: list[torch.Tensor], sums: torch.Tensor, comparable: torch.Tensor) -> None:
    depth = len(streams)
    for i in range(depth):
        for j in range(i, depth):
            if streams[i].shape != streams[j].shape or streams[i].ndim not in (3, 4):
                comparable[i, j] = comparable[j, i] = False
                continue
            value = token_cosine(streams[i], streams[j])
            sums[i, j] += value
            if i != j:
                sums[j, i] += value


def _add_updates(first_input: torch.Tensor | None, streams: list[torch.Tensor], sums: torch.Tensor,
                 counts: list[int]) -> None:
    for i, h_out in enumerate(streams):
        h_in = first_input if i == 0 else streams[i - 1]
        if h_in is not None and h_in.shape == h_out.shape and h_out.ndim in (3, 4):
            sums[i] += relative_update(h_in, h_out)
            counts[i] += 1
