"""Measures of what blocks do to the token stream, read without gradients.

``relative_update`` says how much a span of blocks changes the stream (0: the span is the identity);
``token_cosine`` says how alike two streams are, token by token, as LayerSync compares them.
"""

import torch

# imported as a module, not by name: trainer.layersync may import this module in turn, and the
# attribute is looked up only when a function runs, by which time both modules are complete
import trainer.layersync as _layersync

__all__ = ["relative_update", "token_cosine"]


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim not in (3, 4) or a.shape != b.shape:
        raise ValueError(
            f"{what} needs two streams of the same shape, (B, S, D) or (B, T, P, D); got {tuple(a.shape)} and {tuple(b.shape)}"
        )


@torch.no_grad()
def relative_update(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """‖h_out − h_in‖ / ‖h_in‖, the norms over every token and feature of the batch (a 0-dim fp32 tensor).

    0 when the blocks between the two streams leave it unchanged; 1 when they change it by as much
    as its own size.
    """
    _check_same_shape(h_in, h_out, "A relative update")
    # in fp32: in bf16 a small update vanishes in the rounding of the stream it is added to
    h_in, h_out = h_in.float(), h_out.float()
    # the floor only keeps an all-zero input from dividing by 0
    return torch.linalg.vector_norm(h_out - h_in) / torch.linalg.vector_norm(h_in).clamp_min(1e-12)


@torch.no_grad()
def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token's features in ``a`` and ``b``, averaged over batch and tokens
    (a 0-dim fp32 tensor); (B, T, P, D) streams are read as T·P tokens, as LayerSync reads them."""
    _check_same_shape(a, b, "A token cosine")
    a = torch.nn.functional.normalize(_layersync._tokens(a).float(), dim=-1)
    b = torch.nn.functional.normalize(_layersync._tokens(b).float(), dim=-1)
    return (a * b).sum(dim=-1).mean()
