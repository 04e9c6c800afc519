"""The video encoder: a 3D Swin with Hierarchical Temporal Window Attention (SPEC.md §4).

Patch embedding 1x8x8 -> six layers whose temporal window grows 2 -> 4 -> 8 -> 16 -> 16 -> 32
frames while the spatial window stays 3x5 (odd blocks shift by (0, Wh//2, Ww//2), never in time;
windows clamp to the map) -> 2x2 PatchMerging after layers 0, 1 and 4 -> final LayerNorm. Before
the first layer whose temporal window exceeds a clip, the map also feeds the clip-local tap
(`local_feat_proj` PatchMerging + `norm_local`). Attention runs on
`lfvila.kernels.WindowAttention3D`, whose backend is a config field.

Parameter and buffer names follow Video-Swin and the original checkpoints (SPEC.md §13.2).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lfvila.kernels import WindowAttention3D

from ..config import VideoEncoderConfig


class DropPath(nn.Module):
    """Stochastic depth per sample (Video-Swin's DropPath)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock3D(nn.Module):
    """Pre-norm residual block: x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim, heads, window, shift, cfg: VideoEncoderConfig, drop_path: float):
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(
            dim, window, heads, qkv_bias=cfg.qkv_bias, attn_drop=cfg.attn_drop_rate,
            proj_drop=cfg.drop_rate, backend=cfg.attention_backend,
        )  # fmt: skip
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, W, C); the attention clamps the window and its shift to the map."""
        x = x + self.drop_path(self.attn(self.norm1(x), self.shift))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merge (time untouched): concat 4 neighbours -> LN(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, W, C) -> (B, T, ceil(H/2), ceil(W/2), 2C); odd H/W are zero-padded."""
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x0, x1 = x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2]
        x2, x3 = x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], dim=-1)))


class PatchEmbed3D(nn.Module):
    """Conv3d, kernel = stride = patch, then LayerNorm: (B, 3, T, H, W) -> (B, T', H', W', C)."""

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv3d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.norm = nn.LayerNorm(cfg.embed_dim) if cfg.patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(-s) % p for s, p in zip(x.shape[2:], self.patch_size)]  # (t, h, w)
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class BasicLayer(nn.Module):
    """`depth` blocks with one window; odd blocks shifted; optional PatchMerging after."""

    def __init__(self, dim, depth, heads, window, cfg: VideoEncoderConfig, drop_paths, downsample):
        super().__init__()
        shift = (
            window[0] // 2 if not cfg.temporal_no_shifting else 0,
            window[1] // 2,
            window[2] // 2,
        )
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, heads, window, shift if j % 2 else (0, 0, 0), cfg, drop_paths[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpoint = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = (
                checkpoint(block, x, use_reentrant=False)
                if self.use_checkpoint and self.training
                else block(x)
            )
        return self.downsample(x) if self.downsample is not None else x


@dataclasses.dataclass
class VideoFeatures:
    final: torch.Tensor
    """(B, T, h, w, C) map after the last layer and the final LayerNorm."""
    local: torch.Tensor | None
    """(B, T, h, w, C) clip-local tap after `local_feat_proj` and `norm_local`, when asked for."""


class VideoEncoder(nn.Module):
    """3D Swin-B with HTWA (SPEC §4): `forward(video (B, 3, T, H, W)) -> VideoFeatures`."""

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims()
        self.patch_embed = PatchEmbed3D(cfg)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            layer = BasicLayer(
                dims[i], depth, cfg.num_heads[i], cfg.window_size[i], cfg,
                rates[start : start + depth], downsample=i in cfg.downsample_stages,
            )  # fmt: skip
            layer.use_checkpoint = i in cfg.checkpoint_layers
            self.layers.append(layer)
            start += depth
        self.norm = nn.LayerNorm(dims[-1])
        # clip-local tap: before the first layer whose temporal window exceeds a clip (L3)
        self.local_layer = next(
            (i for i, w in enumerate(cfg.window_size) if w[0] > cfg.local_window), len(cfg.depths)
        )
        tap_dim = self._input_dim(self.local_layer)
        self.local_feat_proj = PatchMerging(tap_dim, dims[-1] if 2 * tap_dim != dims[-1] else None)
        self.norm_local = nn.LayerNorm(dims[-1])
        self.apply(_init_weights)

    def _input_dim(self, layer: int) -> int:
        dims = self.cfg.dims()
        if layer == 0:
            return dims[0]
        return dims[layer - 1] * (2 if (layer - 1) in self.cfg.downsample_stages else 1)

    def forward(self, video: torch.Tensor, with_local: bool = True) -> VideoFeatures:
        """video: (B, 3, T, H, W), normalised frames."""
        x = self.pos_drop(self.patch_embed(video))
        local = None
        for i, layer in enumerate(self.layers):
            if i == self.local_layer and with_local:
                local = self.norm_local(self.local_feat_proj(x))
            x = layer(x)
        return VideoFeatures(final=self.norm(x), local=local)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def pool_video(feature_map: torch.Tensor, num_clips: int):
    """LF-VILA's `downsample_video_embd` (SPEC §4.8).

    Args:
        feature_map: (B, T, h, w, C), e.g. (B, 32, 3, 5, 1024).
    Returns:
        tokens (B, T, P, C): per-frame MaxPool2d(kernel (2, 3), stride 1), P = (h-1)(w-2) = 6;
        clips (B, num_clips, C): mean over each clip's frames and tokens;
        video (B, C): mean of the clip features.
    """
    b, t, h, w, c = feature_map.shape
    x = feature_map.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    x = F.max_pool2d(x, kernel_size=(2, 3), stride=1)  # (B*T, C, h-1, w-2)
    tokens = x.flatten(2).transpose(1, 2).reshape(b, t, -1, c)
    clips = tokens.reshape(b, num_clips, t // num_clips, -1, c).mean(dim=(2, 3))
    return tokens, clips, clips.mean(dim=1)
