"""AnimateAnyonePipeline: reference image + skeleton sequence -> video (paper section 3, 4.1).

(Longer than our other modules on purpose: it is one concept, the pipeline with its own input
preparation and decoding, kept in one file to read top to bottom as diffusers' pipelines do.)

Reads top to bottom like a diffusers pipeline:

1. Inputs are checked and preprocessed. The reference image and every skeleton are fitted
   into the output size with their aspect kept and the rest padded ("contain", the mapping of
   `pose_bridge.keypoints.Pose.fitted`): the reference is padded with the mean colour of its
   own border, skeletons with black. The CLIP input is that same padded reference, padded once
   more to a square, so CLIP's centre crop never cuts the character.
2. CLIP embeds the reference (one context token); the VAE encodes it (posterior mean x scaling);
   the ReferenceNet runs once at timestep 0 and its writers fill the reference bank.
3. Denoising: each step, every context window (`context_windows.py`) takes its frames' Pose
   Guider features (computed once per call within a memory budget: `pose_features.py`) and
   runs the denoising UNet on its latents (classifier-free guidance batched: the
   unconditional half has a zero CLIP embedding and no reference attention, the same pose);
   noise predictions are blended per frame with the windows' weights (tapered cross-fades by
   default, or Moore's wrapping windows with a plain mean: `context_schedule`), then the
   scheduler steps every frame. Latents and scheduler arithmetic stay float32; the models run
   in their own dtype (fp16/bf16 on GPU, fp32 on CPU).
4. The VAE decodes the final latents in chunks; each chunk is handed to `on_frames` as soon as
   it exists, so with `output_type=None` no decoded frame is kept and memory does not grow with
   the video's length (host memory holds the latents, and the Pose Guider features of the
   first frames up to a budget: `pose_features.py`; skeletons are drawn when a window needs
   them). Decoded chunks go through diffusers' VideoProcessor; VAE slicing and tiling
   (`enable_vae_slicing`, `enable_vae_tiling`) apply to each chunk.

diffusers' switches work as on its own pipelines: `enable_model_cpu_offload()` and
`enable_sequential_cpu_offload()` (the models are freed again after each call),
`callback_on_step_end` with `interrupt`, and `set_progress_bar_config`.

Example::

    pipe = AnimateAnyonePipeline.from_pretrained(folder, dtype=torch.float16).to("cuda")
    video = pipe(reference, poses, height=768, width=512, generator=torch.Generator().manual_seed(0)).frames[0]

One call at a time per pipeline: the reference bank and the pose hook hold the call's state.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPVisionModelWithProjection

from animate_backend.context_windows import check_context, context_windows
from animate_backend.errors import CancelledError, InputError, is_out_of_memory, out_of_memory_error
from animate_backend.images import border_colour, letterbox, pad_to_square, to_rgb_array
from animate_backend.models.context_attention import install_single_token_cross_attention
from animate_backend.models.motion_norm import set_motion_norm
from animate_backend.models.pose_guider import PoseFeatureInjector, PoseGuider
from animate_backend.models.reference_attention import ReferenceBank, install_reference_attention
from animate_backend.models.speed import enable_speed_setting
from animate_backend.pose_features import DEFAULT_BUDGET_BYTES, POSE_GUIDER_CHUNK, PoseFeatures, SkeletonImages
from pose_bridge.settings import JobSettings

logger = logging.getLogger(__name__)

DEFAULTS = JobSettings()  # the generation settings' defaults, declared in pose_bridge.settings

# A file of this name in a saved pipeline folder marks its weights as random (make-tiny).
UNTRAINED_MARKER = "UNTRAINED_RANDOM_WEIGHTS.txt"

OUTPUT_TYPES = ("pil", "np", "pt", "latent", None)

# Raised whenever this code makes other pictures from the same weights and settings, so that a
# job's finished frames from an older version are made again, not reused (it is part of the
# job fingerprint). 2: the motion modules normalise per frame, as the released weights expect.
COMPUTATION_VERSION = 2


def default_decode_chunk_size(device: torch.device | str) -> int:
    """Frames per VAE decode call on `device`.

    On the CPU, larger chunks buy no speed and cost memory: decoding eight 256x256 frames of
    the SD VAE took the same CPU time in chunks of 8, 2 or 1 frames, with peaks of 1.7, 0.5 and
    0.4 GiB above the model. Accelerators decode a larger chunk faster.
    """
    return 2 if torch.device(device).type == "cpu" else 8


def make_clip_image_processor(**kwargs):
    """A CLIPImageProcessor (OpenAI CLIP defaults unless overridden).

    transformers 5 backs CLIPImageProcessor with torchvision and warns when it falls back to
    Pillow; without torchvision we ask for the Pillow implementation directly.
    """
    if importlib.util.find_spec("torchvision") is None:
        try:
            from transformers import CLIPImageProcessorPil
        except ImportError:
            pass
        else:
            return CLIPImageProcessorPil(**kwargs)
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(**kwargs)


def default_scheduler(beta_schedule: str = "linear") -> DDIMScheduler:
    """DDIM as Moore-AnimateAnyone's released inference config sets it (docs/model.md, "Sampling").

    `beta_schedule` is a setting: the inference config says "linear", its training scripts
    (and MusePose's inference) "scaled_linear".
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=beta_schedule,
        clip_sample=False,
        steps_offset=1,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


@dataclass
class AnimateAnyoneOutput(BaseOutput):
    """frames: list of lists of PIL images ("pil"), float array (B, F, H, W, 3) in [0, 1] ("np"),
    float tensor (B, F, 3, H, W) in [0, 1] ("pt"), latents (B, 4, F, h, w) ("latent"), or None
    (output_type=None: frames were only streamed to on_frames)."""

    frames: Any = None


# ----------------------------------------------------------------------------- pipeline


class AnimateAnyonePipeline(DiffusionPipeline):
    """Animate Anyone: a character image animated by a sequence of poses.

    Components: vae (AutoencoderKL), image_encoder (CLIPVisionModelWithProjection),
    feature_extractor (CLIPImageProcessor), reference_unet (UNet2DConditionModel, the
    ReferenceNet), denoising_unet (UNetMotionModel), pose_guider (PoseGuider), scheduler (any
    diffusers scheduler; DDIM by default, `default_scheduler()`).

    On construction the reference-attention processors are installed (`self.reference_bank`),
    a forward hook adds the Pose Guider's features after the denoising UNet's conv_in
    (`self.pose_injector`), and the motion modules are set to normalise per frame
    (`motion_norm`, see `models/motion_norm.py`).
    """

    # True for random weights (make-tiny): callers must label any output as untrained.
    is_untrained = False

    # diffusers' offloading (enable_model_cpu_offload) moves one model at a time to the device,
    # in the order a call uses them; the VAE comes last so the UNet leaves before decoding (the
    # VAE's reference encoding early on just keeps it on the device, it is small).
    model_cpu_offload_seq = "image_encoder->reference_unet->pose_guider->denoising_unet->vae"
    # Every component is needed: a missing one is an error when loading, never a silent None.
    _optional_components: list[str] = []
    # What callback_on_step_end may read and replace after each step.
    _callback_tensor_inputs = ["latents"]
    # Host memory for the Pose Guider features kept through a call (pose_features.py).
    pose_feature_budget_bytes: int = DEFAULT_BUDGET_BYTES

    def __init__(
        self,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor,  # a transformers CLIPImageProcessor (or its Pillow twin)
        reference_unet: UNet2DConditionModel,
        denoising_unet: UNetMotionModel,
        pose_guider: PoseGuider,
        scheduler: KarrasDiffusionSchedulers,
        motion_norm: str = "per_frame",
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            reference_unet=reference_unet,
            denoising_unet=denoising_unet,
            pose_guider=pose_guider,
            scheduler=scheduler,
        )
        if pose_guider.config.conditioning_embedding_channels != denoising_unet.config.block_out_channels[0]:
            raise ValueError(
                f"the Pose Guider outputs {pose_guider.config.conditioning_embedding_channels} channels but the "
                f"denoising UNet's conv_in has {denoising_unet.config.block_out_channels[0]}; they must be equal"
            )
        # Saved in model_index.json; "per_frame" is what every released motion module was trained with.
        set_motion_norm(denoising_unet, motion_norm)
        self.register_to_config(motion_norm=motion_norm)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)
        self._interrupt = False
        self.reference_bank: ReferenceBank = install_reference_attention(reference_unet, denoising_unet)
        # The CLIP context is one token, so cross-attention needs no queries (models/context_attention.py).
        install_single_token_cross_attention(reference_unet, denoising_unet)
        self.pose_injector = PoseFeatureInjector(denoising_unet)

    # -- diffusers' switches

    @property
    def interrupt(self) -> bool:
        """True once a callback_on_step_end set `pipe._interrupt = True`: the remaining steps are
        skipped and the latents so far are decoded (diffusers' convention). `should_cancel`
        stops harder: within one window, with CancelledError and nothing decoded."""
        return self._interrupt

    def enable_vae_slicing(self) -> None:
        """Decode one frame at a time within each decode chunk: less memory, a little slower."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode (and encode) in overlapping tiles, for sizes whose whole frames do not fit."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    # -- saving and loading: the untrained marker travels with the folder

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, *args, **kwargs)
        marker = Path(save_directory) / UNTRAINED_MARKER
        if self.is_untrained:
            marker.write_text(
                "This pipeline has random, untrained weights (python -m animate_backend make-tiny).\n"
                "Its videos are noise and must be labelled as untrained wherever shown.\n"
            )
        elif marker.exists():
            marker.unlink()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "AnimateAnyonePipeline":
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if (Path(pretrained_model_name_or_path) / UNTRAINED_MARKER).exists():
            pipe.is_untrained = True
        return pipe

    # -- speed

    def enable_speed(self, *settings: str) -> "AnimateAnyonePipeline":
        """Turn on speed settings (`models/speed.py`, `SPEED_SETTINGS`), e.g. "channels_last".

        They compute the same video (to float32 rounding) faster on some devices; weights and
        saving are unchanged. Returns the pipeline, so it chains after `from_pretrained`.
        """
        for name in settings:
            enable_speed_setting(self, name)
        return self

    # -- conditioning

    @property
    def motion_context_limit(self) -> int:
        """The most frames one window may hold (the motion modules' positional-encoding length)."""
        return int(getattr(self.denoising_unet.config, "motion_max_seq_length", 32))

    def prepare_reference(self, reference_image, width: int, height: int) -> tuple[torch.Tensor, np.ndarray]:
        """The reference fitted to width x height: (1, 3, H, W) in [-1, 1], and the CLIP input (square uint8)."""
        rgb = to_rgb_array(reference_image, "reference image")
        fill = border_colour(rgb)
        fitted = letterbox(rgb, width, height, fill)
        # torch.tensor copies: `fitted` may be a read-only view of the caller's image.
        pixels = torch.tensor(fitted).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return pixels, pad_to_square(fitted, fill)

    @torch.no_grad()
    def encode_clip(self, clip_image: np.ndarray, device: torch.device) -> torch.Tensor:
        """CLIP image embedding as a single context token, (1, 1, D)."""
        pixel_values = self.feature_extractor(images=clip_image, return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixel_values).image_embeds[:, None, :]

    @torch.no_grad()
    def encode_reference_latents(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """VAE posterior mean x scaling factor, (1, 4, h, w)."""
        pixels = pixels.to(device=device, dtype=self.vae.dtype)
        return self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def write_reference(self, reference_latents: torch.Tensor, clip_embeds: torch.Tensor) -> None:
        """Run the ReferenceNet once (timestep 0); its writers fill `self.reference_bank`.

        A batch of references (e.g. [zero-CLIP, CLIP] for reference in both CFG branches)
        gives one bank row per reference.
        """
        self.reference_bank.clear()
        unet = self.reference_unet
        unet(
            reference_latents.to(unet.dtype),
            torch.zeros((), device=reference_latents.device, dtype=torch.long),
            encoder_hidden_states=clip_embeds.to(unet.dtype),
            return_dict=False,
        )

    @torch.no_grad()
    def pose_features(self, skeletons: np.ndarray, device: torch.device) -> torch.Tensor:
        """Pose Guider features (1, C, F, h, w) for skeleton images (F, H, W, 3) uint8."""
        pixels = torch.from_numpy(skeletons).to(device).permute(0, 3, 1, 2)
        pixels = pixels.to(self.pose_guider.dtype) / 255.0
        features = self.pose_guider(pixels)
        return features.permute(1, 0, 2, 3)[None]

    def video_pose_features(self, skeletons: SkeletonImages, height: int, width: int) -> PoseFeatures:
        """The Pose Guider features of a video's frames, for its windows (see pose_features.py).

        Frames go through the Pose Guider `POSE_GUIDER_CHUNK` at a time; the features of the
        first frames, up to `self.pose_feature_budget_bytes`, are kept for the whole call, in
        host memory, and the rest computed again for each window that needs them.
        """
        device = self._execution_device
        channels = self.pose_guider.config.conditioning_embedding_channels
        latent_pixels = (height // self.vae_scale_factor) * (width // self.vae_scale_factor)
        bytes_per_frame = channels * latent_pixels * self.pose_guider.dtype.itemsize
        return PoseFeatures(
            lambda frames: self.pose_features(frames, device), skeletons, bytes_per_frame,
            POSE_GUIDER_CHUNK, self.pose_feature_budget_bytes,
        )

    @torch.no_grad()
    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        pose_features: torch.Tensor,
        clip_embeds: torch.Tensor,
        guidance_scale: float,
        reference_in_uncond: bool = False,
    ) -> torch.Tensor:
        """Guided noise (model output) for latents (1, 4, F, h, w) of one window, float32.

        `pose_features` are the window's (1, C, F, h, w) from `pose_features`. Needs the
        reference bank written (`write_reference`). With guidance, the unconditional
        half of the batch has a zero CLIP embedding and, unless `reference_in_uncond`, no
        reference attention; both halves get the same pose features.
        """
        unet = self.denoising_unet
        device = latents.device
        frames = latents.shape[2]
        do_cfg = guidance_scale > 1.0
        model_input = torch.cat([latents, latents]) if do_cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, timestep)
        context = torch.cat([torch.zeros_like(clip_embeds), clip_embeds]) if do_cfg else clip_embeds
        context = context.repeat_interleave(frames, dim=0).to(unet.dtype)

        bank = self.reference_bank
        if do_cfg and not reference_in_uncond:
            bank.reading_samples = (False, True)  # [uncond, cond] halves of the batch
        else:
            bank.reading_samples = None
        self.pose_injector.set(pose_features.to(device=device, dtype=unet.dtype))
        try:
            noise = unet(model_input.to(unet.dtype), timestep, encoder_hidden_states=context, return_dict=False)[0]
        finally:
            self.pose_injector.clear()
            bank.reading_samples = None
        noise = noise.float()
        if do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        return noise

    # -- decoding

    @torch.no_grad()
    def decode_video(
        self,
        latents: torch.Tensor,
        on_frames: Callable[[int, np.ndarray], None] | None = None,
        chunk_size: int | None = None,
        output_type: str | None = "np",
        should_cancel: Callable[[], bool] | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ):
        """Decode latents (1, 4, F, h, w) chunk by chunk.

        Each chunk is passed to `on_frames(first_index, uint8 (n, H, W, 3))` as soon as it is
        decoded. Returns the frames in `output_type` ("np", "pt", "pil"), or None for None, in
        which case nothing decoded is kept.
        """
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise InputError(f"latents to decode must be (1, 4, F, h, w), got shape {tuple(latents.shape)}")
        total = latents.shape[2]
        # The execution device, not vae.device: with model offloading the VAE waits on the CPU.
        device = self._execution_device
        chunk_size = chunk_size or default_decode_chunk_size(device)
        kept: list = []
        for start in range(0, total, chunk_size):
            if should_cancel is not None and should_cancel():
                raise CancelledError(f"cancelled while decoding, after {start} of {total} frames")
            if on_frames is not None or output_type is not None:
                video = self.decode_latents(latents[:, :, start : start + chunk_size], device)
                frames = self.video_processor.postprocess_video(video, output_type="pt" if output_type == "pt" else "np")[0]
                del video  # the decoded chunk goes before the next one is decoded: memory stays flat
                if output_type == "pt":
                    frames = frames.cpu()
                    kept.append(frames)
                    frames = frames.permute(0, 2, 3, 1).numpy()
                elif output_type == "np":
                    kept.append(frames)
                uint8 = (frames * 255).round().astype(np.uint8)  # (n, H, W, 3), as VaeImageProcessor rounds
                if on_frames is not None:
                    on_frames(start, uint8)
                if output_type == "pil":
                    kept.extend(PIL.Image.fromarray(frame) for frame in uint8)
            if on_progress is not None:
                done = min(start + chunk_size, total)
                on_progress(_progress("decode", frames_done=done, frames_total=total))
        if output_type is None:
            return None
        if output_type == "np":
            return np.concatenate(kept)[None]
        if output_type == "pt":
            return torch.cat(kept)[None]
        return [kept]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
        """VAE decode of latents (1, 4, n, h, w): a float32 video (1, 3, n, H, W) in [-1, 1].

        The frames go through the VAE as one batch, so VAE slicing (one frame at a time) and
        tiling apply.
        """
        frames = latents[0].permute(1, 0, 2, 3).to(device=device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(frames).sample.float()  # (n, 3, H, W)
        return images.permute(1, 0, 2, 3)[None]

    # -- the call

    def check_inputs(
        self, height, width, num_frames, num_poses, context_frames, context_overlap, output_type, latents,
        num_inference_steps=1, context_schedule="tapered", callback_on_step_end_tensor_inputs=None,
    ):
        multiple = self.vae_scale_factor * 2 ** (len(self.denoising_unet.config.block_out_channels) - 1)
        if height <= 0 or width <= 0 or height % 8 or width % 8:
            raise InputError(
                f"width and height must be positive multiples of 8, got {width}x{height}; "
                f"try {max(8, width // 8 * 8)}x{max(8, height // 8 * 8)}"
            )
        if height % multiple or width % multiple:
            logger.info("size %dx%d is not a multiple of %d; the UNet will interpolate", width, height, multiple)
        if num_frames is not None and num_frames != num_poses:
            raise InputError(
                f"num_frames is {num_frames} but {num_poses} poses were given; give one pose per frame "
                "(or leave num_frames out)"
            )
        if num_poses < 1:
            raise InputError("no poses were given: the video needs at least one frame")
        if not 1 <= context_frames <= self.motion_context_limit:
            raise InputError(
                f"context_frames must be between 1 and {self.motion_context_limit} (the motion modules' "
                f"positional-encoding length), got {context_frames}; 24 is the usual value"
            )
        check_context(context_frames, context_overlap, context_schedule)
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be at least 1, got {num_inference_steps}; 20-30 is usual")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if unknown:
            raise InputError(
                f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {unknown}"
            )
        if latents is not None:
            factor = self.vae_scale_factor  # 8 for SD's VAE; smaller VAEs (the demo model's: 4) differ
            expected = (1, self.denoising_unet.config.in_channels, num_poses, height // factor, width // factor)
            if tuple(latents.shape) != expected:
                raise InputError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    @torch.no_grad()
    def __call__(
        self,
        reference_image: PIL.Image.Image | np.ndarray,
        poses,
        height: int,
        width: int,
        num_frames: int | None = None,
        num_inference_steps: int = DEFAULTS.steps,
        guidance_scale: float = DEFAULTS.guidance_scale,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        context_frames: int = DEFAULTS.context_frames,
        context_overlap: int = DEFAULTS.context_overlap,
        output_type: str | None = "pil",
        callback_on_step_end: Callable[["AnimateAnyonePipeline", int, Any, dict], dict] | None = None,
        on_progress: Callable[[dict], None] | None = None,
        on_frames: Callable[[int, np.ndarray], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        draw_hands: bool = DEFAULTS.draw_hands,
        draw_face: bool = DEFAULTS.draw_face,
        *,
        reference_in_uncond: bool = False,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        eta: float = 0.0,
        decode_chunk_size: int | None = None,
        context_schedule: str = DEFAULTS.context_schedule,
    ) -> AnimateAnyoneOutput:
        """Animate `reference_image` with `poses`.

        Args:
            reference_image: the character, PIL image or uint8 (H, W, 3) array, any size.
            poses: a pose_bridge PoseSequence (drawn at height x width) or skeleton images.
            height, width: output size in pixels, multiples of 8.
            num_frames: must equal the number of poses when given.
            num_inference_steps, guidance_scale: sampling steps and CFG scale (<= 1 disables CFG).
            generator, latents: the random source, or initial latents (1, 4, F, height/f, width/f),
                f the VAE's downscale factor (`vae_scale_factor`, 8 for SD's VAE).
            context_frames, context_overlap: window length and overlap for long videos.
            context_schedule: "tapered" (no wrap, cross-faded overlaps) or "loop" (Moore's released
                windows: the last one wraps onto the first frames, plain per-frame mean).
            output_type: "pil", "np", "pt", "latent", or None (frames only go to on_frames).
            callback_on_step_end: diffusers-style `f(pipe, step, timestep, callback_kwargs) -> dict` after
                each step (or a diffusers PipelineCallback); callback_kwargs holds the tensors named
                in `callback_on_step_end_tensor_inputs` (default ["latents"]), and a returned
                "latents" replaces the latents. Setting `pipe._interrupt = True` in it skips the
                remaining steps (`interrupt`).
            on_progress: called with {stage, step, steps, window, windows, frames_done, frames_total}
                after every window of every step (the same count drives `self.progress_bar`),
                and after every decoded chunk.
            on_frames: `f(first_index, uint8 (n, H, W, 3))` as decoded chunks become final.
            should_cancel: checked before every window and decode chunk; True raises CancelledError
                (a cancel stops within one window, where `interrupt` waits for the step's end).
            draw_hands, draw_face: which parts of a PoseSequence to draw.
            reference_in_uncond: also give the unconditional branch reference attention (with a
                zero-CLIP reference), as some other releases do. Off matches Moore's weights.
            eta: DDIM eta (ignored by schedulers without it).
            decode_chunk_size: frames per VAE decode (default: 2 on the CPU, 8 on accelerators).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        skeletons = SkeletonImages(poses, width, height, draw_hands, draw_face) if _size_ok(width, height) else None
        self.check_inputs(
            height, width, num_frames, 0 if skeletons is None else len(skeletons),
            context_frames, context_overlap, output_type, latents, num_inference_steps, context_schedule,
            callback_on_step_end_tensor_inputs,
        )
        self._interrupt = False
        try:
            return self._generate(
                reference_image, skeletons, height, width, num_inference_steps, guidance_scale, generator,
                latents, context_frames, context_overlap, output_type, callback_on_step_end,
                callback_on_step_end_tensor_inputs, on_progress, on_frames, should_cancel, reference_in_uncond,
                eta, decode_chunk_size, context_schedule,
            )
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory_error(exc, width, height, context_frames) from exc
        finally:
            self.reference_bank.clear()
            self.pose_injector.clear()
            # With model offloading: every model back to the CPU, memory freed (a no-op otherwise).
            self.maybe_free_model_hooks()

    def _generate(
        self, reference_image, skeletons, height, width, num_inference_steps, guidance_scale, generator,
        latents, context_frames, context_overlap, output_type, callback_on_step_end, callback_tensor_inputs,
        on_progress, on_frames, should_cancel, reference_in_uncond, eta, decode_chunk_size, context_schedule,
    ) -> AnimateAnyoneOutput:
        device = self._execution_device
        total = len(skeletons)
        report = on_progress or (lambda info: None)

        # 1-2. reference: CLIP token, latent, ReferenceNet once.
        report(_progress("reference", frames_total=total))
        pixels, clip_image = self.prepare_reference(reference_image, width, height)
        clip_embeds = self.encode_clip(clip_image, device)
        reference_latents = self.encode_reference_latents(pixels, device)
        do_cfg = guidance_scale > 1.0
        if do_cfg and reference_in_uncond:
            self.write_reference(
                reference_latents.repeat(2, 1, 1, 1), torch.cat([torch.zeros_like(clip_embeds), clip_embeds])
            )
        else:
            self.write_reference(reference_latents, clip_embeds)

        # 3. latents and timesteps (float32 throughout).
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (1, self.denoising_unet.config.in_channels, total, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            latents = latents.to(device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator, eta)

        windows = context_windows(total, context_frames, context_overlap, context_schedule)
        window_frames = [torch.tensor(w.frames, device=device) for w in windows]
        window_weights = [
            torch.tensor(w.weights, device=device, dtype=torch.float32).view(1, 1, -1, 1, 1) for w in windows
        ]
        weight_sum = torch.zeros((1, 1, total, 1, 1), device=device, dtype=torch.float32)
        for frames, weights in zip(window_frames, window_weights):
            weight_sum.index_add_(2, frames, weights)
        pose_features = self.video_pose_features(skeletons, height, width)
        with self.progress_bar(total=len(timesteps) * len(windows)) as progress_bar:
            for step, timestep in enumerate(timesteps):
                if self.interrupt:
                    break
                noise_sum = torch.zeros_like(latents)
                for index, window in enumerate(windows):
                    if should_cancel is not None and should_cancel():
                        raise CancelledError(
                            f"cancelled at step {step + 1} of {len(timesteps)}, window {index + 1} of {len(windows)}"
                        )
                    frames = window_frames[index]
                    noise = self.predict_noise(
                        latents.index_select(2, frames), timestep,
                        pose_features.window(window.frames, device), clip_embeds,
                        guidance_scale, reference_in_uncond,
                    )
                    noise_sum.index_add_(2, frames, noise * window_weights[index])
                    progress_bar.update()
                    report(_progress("denoise", step + 1, len(timesteps), index + 1, len(windows), 0, total))
                latents = self.scheduler.step(noise_sum / weight_sum, timestep, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}  # _callback_tensor_inputs
                    callback_kwargs = {name: tensors[name] for name in callback_tensor_inputs}
                    returned = callback_on_step_end(self, step, timestep, callback_kwargs) or {}
                    latents = returned.get("latents", latents)
        self.reference_bank.clear()

        # 4. decode, streaming.
        if output_type == "latent":
            if on_frames is not None:
                self.decode_video(latents, on_frames, decode_chunk_size, None, should_cancel, report)
            return AnimateAnyoneOutput(frames=latents)
        frames = self.decode_video(latents, on_frames, decode_chunk_size, output_type, should_cancel, report)
        return AnimateAnyoneOutput(frames=frames)

    def _step_kwargs(self, generator, eta: float) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs


def _size_ok(width: int, height: int) -> bool:
    return width > 0 and height > 0 and width % 8 == 0 and height % 8 == 0


def _progress(stage: str, step: int = 0, steps: int = 0, window: int = 0, windows: int = 0,
              frames_done: int = 0, frames_total: int = 0) -> dict:
    return {
        "stage": stage, "step": step, "steps": steps, "window": window, "windows": windows,
        "frames_done": frames_done, "frames_total": frames_total,
    }
