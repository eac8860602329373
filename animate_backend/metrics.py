"""Image and video scores: PSNR, SSIM, silhouette IoU, frame-to-frame stability.

Images are float tensors in [0, 1], (N, 3, H, W). SSIM is Wang et al. 2004 ("Image Quality
Assessment: From Error Visibility to Structural Similarity"): local means, variances and
covariance under an 11x11 Gaussian window (sigma 1.5), constants (0.01 L)^2 and (0.03 L)^2,
computed per channel on the window positions that lie wholly inside the image, averaged.
It is differentiable, so the VAE stage uses it as a loss too.

Silhouettes: on a plain background (the synthetic datasets', `blender_addon.commands.dataset`) the
figure is every pixel whose colour differs from the background colour, the median of the
image's border pixels, by more than a threshold in some channel. IoU compares two such masks.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# A pixel belongs to the figure when one channel differs from the background by more than
# this (in [0, 1]): above the VAE's and the renderer's noise on flat colour (about 0.02),
# below the contrast of the demo character's darkest part against a grey background.
SILHOUETTE_THRESHOLD = 0.12


def _gaussian_window(size: int, sigma: float, channels: int, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).to(dtype=dtype, device=device)
    return window.expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM of each image pair, (N,). Images smaller than the window use a window of their size."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = min(window, a.shape[-1], a.shape[-2])
    channels = a.shape[1]
    kernel = _gaussian_window(size, sigma, channels, a.dtype, a.device)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image pair in dB, (N,); identical images give inf."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """The median colour of each image's one-pixel border, (N, 3)."""
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    return border.median(dim=2).values


def silhouette(images: torch.Tensor, threshold: float = SILHOUETTE_THRESHOLD,
               background: torch.Tensor | None = None) -> torch.Tensor:
    """Figure masks (N, H, W) bool: pixels differing from the background colour by > threshold."""
    if background is None:
        background = background_colour(images)
    difference = (images - background[:, :, None, None]).abs().amax(dim=1)
    return difference > threshold


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each pair of masks (N, H, W), (N,); two empty masks give 1."""
    a, b = a.flatten(1), b.flatten(1)
    union = (a | b).sum(dim=1).double()
    inter = (a & b).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).float()


def temporal_error(generated: torch.Tensor, truth: torch.Tensor) -> float:
    """Frame-to-frame stability: the mean absolute difference between the generated and the
    true change from each frame to the next (0: it changes exactly as much and where the truth
    does; flicker and frozen frames both raise it). Frames are (F, 3, H, W), F >= 2."""
    if generated.shape[0] < 2:
        return 0.0
    return float(((generated[1:] - generated[:-1]) - (truth[1:] - truth[:-1])).abs().mean())
