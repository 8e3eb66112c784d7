"""The built-in demo model: a small class-conditional SiT-style transformer.

It is a diffusers ``ModelMixin`` so that it saves and loads with ``save_pretrained`` /
``from_pretrained`` like every other family, and supports diffusers' gradient checkpointing.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) tensor of timesteps (already scaled to ~[0, 1000])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (1, grid*grid, dim), as DiT uses."""
    coords = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = [fn(axis.reshape(-1, 1) * freqs) for axis in (ys, xs) for fn in (torch.sin, torch.cos)]
    embed = torch.cat(parts, dim=1)  # (grid*grid, 4*quarter)
    return F.pad(embed, (0, dim - embed.shape[1]))[None]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning. Returns a (B, S, D) tensor."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, S, D/heads)
        x = x + gate1[:, None] * self.proj(h.transpose(1, 2).reshape(B, S, D))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class DemoDiT(ModelMixin, ConfigMixin):
    """Class-conditional DiT on single-channel images; the last class index is the null class (CFG)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        patch_size: int = 2,
        in_channels: int = 1,
        hidden_size: int = 96,
        num_layers: int = 16,
        num_attention_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
    ):
        super().__init__()
        self.gradient_checkpointing = False
        p, D = patch_size, hidden_size
        self.num_tokens = (sample_size // p) ** 2
        self.x_embed = nn.Linear(in_channels * p * p, D)
        self.register_buffer("pos_embed", sincos_pos_embed(D, sample_size // p), persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.y_embed = nn.Embedding(num_classes + 1, D)  # + 1: the null class of classifier-free guidance
        self.blocks = nn.ModuleList([DiTBlock(D, num_attention_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.proj_out = nn.Linear(D, p * p * in_channels)
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, as in DiT/SiT
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.adaLN_out[-1].weight)
        nn.init.zeros_(self.adaLN_out[-1].bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), timestep (B,) in [0, 1000], class_labels (B,) → velocity (B, C, H, W)."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        tokens = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        h = self.x_embed(tokens) + self.pos_embed  # (B, S, D)
        c = self.t_embed(timestep_embedding(timestep, 256)) + self.y_embed(class_labels)  # (B, D)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, c)
            else:
                h = block(h, c)
        shift, scale = self.adaLN_out(c).chunk(2, dim=-1)
        out = self.proj_out(modulate(self.norm_out(h), shift, scale))  # (B, S, p*p*C)
        out = out.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, C, H, W)
