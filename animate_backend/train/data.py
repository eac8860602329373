"""The training dataset: clips with stored keypoints, cut into samples at the training size.

A manifest (manifest.py: JSON list, JSON {"clips": [...]}, or JSONL, one clip per line) lists clips:

    {"video": "clips/dance01.mp4", "keypoints": "clips/dance01.poses.json"}
    {"frames": "synthetic/take_003/frames", "keypoints": "synthetic/take_003/poses.json"}

Relative paths are relative to the manifest's folder. `keypoints` is anything
pose_bridge.openpose_json.load_poses reads (a sequence file as written by
`python -m pose_bridge detect`, or a folder of OpenPose frame files), one pose per frame.

Skeletons are never read as images: they are drawn from the stored keypoints at the
training resolution (pose_bridge.drawing), after the same aspect-preserving crop that
the target and reference frames get, so a skeleton lies exactly on its frame.

Stage 1 samples one target frame and one reference frame at least
`min_reference_distance` frames away. Stage 2 samples a window of `clip_frames` frames
`clip_stride` apart and a reference at least `min_reference_distance` frames outside
the window (0: anywhere in the clip). Clips that cannot give a sample (too short for
the window, too few frames with keypoints, unreadable files, frame counts that differ
from the keypoints) are dropped when the dataset is built, with a count per reason in
the log. A frame that fails to decode later is skipped with a warning and the next clip
is used, so a long run never dies mid-epoch on one bad file.

Randomness (which frames, which crop) comes from (seed, epoch, index) only, so a
resumed run sees the same samples as an uninterrupted one, with any number of workers.

Videos are decoded from their start up to the last frame a sample needs (exact frame
indices; seeking is not frame-exact in every container). For long videos, cut them into
clips of a few hundred frames, or use frame folders.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from animate_backend.errors import InputError
from animate_backend.train.manifest import read_manifest
from pose_bridge.keypoints import DRAW_CONFIDENCE, Pose, PoseSequence

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Clip:
    """One usable clip, validated when the dataset was built."""

    name: str
    poses: PoseSequence
    video: Path | None = None
    frame_paths: list[Path] = field(default_factory=list)
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the frames
    has_keypoints: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # Stage 1: target frames that have a reference far enough away. Stage 2: window starts.
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_frames(self) -> int:
        return len(self.poses)


@dataclass
class SamplePlan:
    """Which frames and which crop one sample uses (all of it decided before any decoding)."""

    clip_index: int
    frame_indices: list[int]  # one frame in stage 1, the window in stage 2
    reference_index: int
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels


# --- reading frames --------------------------------------------------------------------


def _video_frame_count(path: Path, expected: int) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video. Decodes to count when metadata disagrees."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = (int(stream.codec_context.width), int(stream.codec_context.height))
        count = int(stream.frames or 0)
        if count == expected and count > 0:
            return count, size
        # Container metadata is often missing or off by one: count what really decodes.
        count = sum(1 for _ in container.decode(stream))
    return count, size


def _read_video_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    from pose_bridge.image_io import read_video

    wanted = set(indices)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    for i, frame in enumerate(read_video(path)):
        if i in wanted:
            frames[i] = frame
        if i >= last:
            break
    missing = wanted - set(frames)
    if missing:
        raise InputError(f"{path} ended before frame(s) {sorted(missing)}")
    return frames


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# --- geometry --------------------------------------------------------------------------


def crop_box_for(
    source_size: tuple[int, int], out_size: tuple[int, int], mode: str, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """The source rectangle that scales uniformly onto `out_size` ("cover": no padding)."""
    sw, sh = source_size
    ow, oh = out_size
    scale = max(ow / sw, oh / sh)
    cw, ch = ow / scale, oh / scale
    if mode == "random":
        left = float(rng.uniform(0.0, sw - cw)) if sw - cw > 1e-6 else 0.0
        top = float(rng.uniform(0.0, sh - ch)) if sh - ch > 1e-6 else 0.0
    else:
        left, top = (sw - cw) / 2.0, (sh - ch) / 2.0
    return (left, top, left + cw, top + ch)


def crop_image(rgb: np.ndarray, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> np.ndarray:
    """Resample the `box` of an RGB uint8 image to `out_size` (bicubic, antialiased)."""
    image = Image.fromarray(rgb)
    return np.asarray(image.resize(out_size, Image.Resampling.BICUBIC, box=box))


def crop_pose(pose: Pose, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> Pose:
    """The same crop applied to keypoints: pixel coordinates mapped into the output canvas."""
    left, top, right, _ = box
    scale = out_size[0] / (right - left)
    out = pose.copy()
    out.canvas_width, out.canvas_height = int(out_size[0]), int(out_size[1])
    for points in out.parts().values():
        points[:, 0] = (points[:, 0] - left) * scale
        points[:, 1] = (points[:, 1] - top) * scale
    return out


def _to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0


def _skeleton_tensor(skeleton: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1], the Pose Guider's input range."""
    return torch.from_numpy(np.array(skeleton, copy=True)).permute(2, 0, 1).float() / 255.0


# --- the dataset -----------------------------------------------------------------------


class AnimateAnyoneDataset(torch.utils.data.Dataset):
    """Samples for stage 1 (one frame) or stage 2 (a window of frames), see the module doc.

    Each item is a dict of tensors:
      pixel_values            (3, H, W) stage 1 / (F, 3, H, W) stage 2, in [-1, 1]
      pose_images             same shape, skeletons in [0, 1]
      reference_pixel_values  (3, H, W) in [-1, 1]
      clip_pixel_values       (3, 224, 224), the reference through `clip_processor`
                              (absent when no processor is given)
      clip_index, reference_index, frame_indices (ints, for logs and tests)
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        stage: int,
        width: int,
        height: int,
        crop: str = "random",
        min_reference_distance: int = 8,
        clip_frames: int = 24,
        clip_stride: int = 4,
        draw_hands: bool = True,
        draw_face: bool = True,
        clip_processor: Callable | None = None,
        seed: int = 0,
    ) -> None:
        if stage not in (1, 2):
            raise InputError(f"stage must be 1 or 2, got {stage}")
        if crop not in ("random", "center"):
            raise InputError(f"crop must be 'random' or 'center', got {crop!r}")
        self.stage = stage
        self.size = (int(width), int(height))
        self.crop = crop
        self.min_reference_distance = int(min_reference_distance)
        self.clip_frames = int(clip_frames) if stage == 2 else 1
        self.clip_stride = int(clip_stride) if stage == 2 else 1
        self.draw_hands = draw_hands
        self.draw_face = draw_face
        self.clip_processor = clip_processor
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: Counter[str] = Counter()  # reasons clips were dropped when indexing
        self.load_failures = 0  # samples replaced at load time (this process only)
        self.clips: list[Clip] = []
        for entry in read_manifest(manifest):
            clip = self._index_clip(entry)
            if clip is not None:
                self.clips.append(clip)
        if self.skipped:
            details = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            logger.warning("skipped %d of %d clips: %s", sum(self.skipped.values()),
                           sum(self.skipped.values()) + len(self.clips), details)
        if not self.clips:
            raise InputError(
                f"no usable clip in {manifest} for stage {stage} "
                f"(skipped: {dict(self.skipped) or 'none listed'}); check the paths and the window settings"
            )
        logger.info("dataset: %d clips from %s (stage %d, %dx%d)", len(self.clips), manifest, stage, *self.size)

    # -- indexing ---------------------------------------------------------------------

    @property
    def window_span(self) -> int:
        """Frames from the first to the last frame of a window, inclusive."""
        return (self.clip_frames - 1) * self.clip_stride + 1

    def _skip(self, reason: str, name: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        logger.debug("skipping clip %s: %s %s", name, reason, detail)

    def _index_clip(self, entry: Any) -> Clip | None:
        from pose_bridge.errors import PoseBridgeError
        from pose_bridge.openpose_json import load_poses

        if not isinstance(entry, dict) or not entry.get("keypoints") or (("video" in entry) == ("frames" in entry)):
            self._skip("malformed manifest entries", str(entry)[:80],
                       "(need 'keypoints' and exactly one of 'video' or 'frames')")
            return None
        name = str(entry.get("name") or entry.get("video") or entry.get("frames"))
        try:
            poses = load_poses(entry["keypoints"])
        except (PoseBridgeError, OSError, ValueError) as exc:
            self._skip("unreadable keypoint files", name, str(exc))
            return None
        clip = Clip(name=name, poses=poses)
        try:
            if "video" in entry:
                clip.video = Path(entry["video"])
                count, clip.frame_size = _video_frame_count(clip.video, len(poses))
            else:
                folder = Path(entry["frames"])
                clip.frame_paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                count = len(clip.frame_paths)
                if count == 0:
                    raise OSError(f"no images in {folder}")
                clip.frame_size = _image_size(clip.frame_paths[0])
        except Exception as exc:  # noqa: BLE001 - PyAV and Pillow raise many kinds; any of them means unusable
            self._skip("unreadable videos or frame folders", name, str(exc))
            return None
        if count != len(poses):
            self._skip("clips whose frame count differs from their keypoints", name, f"({count} vs {len(poses)})")
            return None
        clip.has_keypoints = np.array(
            [(pose.body[:, 2] >= DRAW_CONFIDENCE).any() for pose in poses.frames], dtype=bool
        )
        if not clip.has_keypoints.any():
            self._skip("clips without any keypoints", name)
            return None
        if self.stage == 2 and count < self.window_span:
            self._skip("clips shorter than the training window", name, f"({count} < {self.window_span})")
            return None
        clip.starts = self._eligible_starts(clip)
        if len(clip.starts) == 0:
            reason = ("clips without a window of frames that all have keypoints and a reference"
                      if self.stage == 2 else
                      "clips without two frames with keypoints far enough apart")
            self._skip(reason, name)
            return None
        return clip

    def _reference_candidates(self, clip: Clip, first: int, last: int) -> np.ndarray:
        """Frames with keypoints that may serve as reference for target frames first..last."""
        frames = np.flatnonzero(clip.has_keypoints)
        d = self.min_reference_distance
        if d == 0:
            return frames
        return frames[(frames <= first - d) | (frames >= last + d)]

    def _eligible_starts(self, clip: Clip) -> np.ndarray:
        starts = []
        for start in range(clip.num_frames - self.window_span + 1):
            window = start + self.clip_stride * np.arange(self.clip_frames)
            if not clip.has_keypoints[window].all():
                continue
            if len(self._reference_candidates(clip, int(window[0]), int(window[-1]))) == 0:
                continue
            starts.append(start)
        return np.array(starts, dtype=np.int64)

    # -- sampling ---------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def plan(self, index: int, attempt: int = 0) -> SamplePlan:
        """Choose frames and crop for item `index`, from (seed, epoch, index, attempt) only."""
        rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
        clip = self.clips[index]
        start = int(rng.choice(clip.starts))
        frames = [start + self.clip_stride * k for k in range(self.clip_frames)]
        candidates = self._reference_candidates(clip, frames[0], frames[-1])
        reference = int(rng.choice(candidates))
        box = crop_box_for(clip.frame_size, self.size, self.crop, rng)
        return SamplePlan(index, frames, reference, box)

    def read_frames(self, clip: Clip, indices: list[int]) -> dict[int, np.ndarray]:
        """Decoded RGB frames of `clip` by index."""
        if clip.video is not None:
            return _read_video_frames(clip.video, indices)
        from pose_bridge.image_io import read_image

        return {i: read_image(clip.frame_paths[i]) for i in set(indices)}

    def load(self, plan: SamplePlan) -> dict[str, Any]:
        """Decode, crop and draw one planned sample."""
        from pose_bridge.drawing import draw_pose

        clip = self.clips[plan.clip_index]
        images = self.read_frames(clip, plan.frame_indices + [plan.reference_index])
        source_w, source_h = clip.frame_size
        targets, skeletons = [], []
        for i in plan.frame_indices:
            frame = images[i]
            if (frame.shape[1], frame.shape[0]) != clip.frame_size:
                raise InputError(f"{clip.name}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"the clip's first frame is {source_w}x{source_h}")
            targets.append(_to_unit_range(crop_image(frame, plan.crop_box, self.size)))
            pose = clip.poses[i]
            if pose.size != clip.frame_size:
                pose = pose.resized(source_w, source_h)  # keypoints stored on another canvas size
            skeleton = draw_pose(
                crop_pose(pose, plan.crop_box, self.size), hands=self.draw_hands, face=self.draw_face,
                **self.stroke_kwargs(),
            )
            skeletons.append(_skeleton_tensor(skeleton))
        reference = crop_image(images[plan.reference_index], plan.crop_box, self.size)
        sample: dict[str, Any] = {
            "pixel_values": targets[0] if self.stage == 1 else torch.stack(targets),
            "pose_images": skeletons[0] if self.stage == 1 else torch.stack(skeletons),
            "reference_pixel_values": _to_unit_range(reference),
            "clip_index": plan.clip_index,
            "reference_index": plan.reference_index,
            "frame_indices": torch.tensor(plan.frame_indices),
        }
        if self.clip_processor is not None:
            # As the pipeline does: CLIP sees the reference padded to a square with its own
            # border colour, so CLIP's centre crop never cuts the character.
            from animate_backend.images import border_colour, pad_to_square

            square = pad_to_square(reference, border_colour(reference))
            sample["clip_pixel_values"] = self.clip_processor(images=square, return_tensors="pt").pixel_values[0]
        return sample

    def stroke_kwargs(self) -> dict[str, float]:
        """Stroke scale for skeletons at the training size: the same rule as the pipeline's."""
        from pose_bridge.drawing import stroke_scale_for

        return {"stroke_scale": stroke_scale_for(*self.size)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A file that indexed fine can still fail to decode (a truncated video, a disk
        # error). Use the next clip instead of ending a long run; the warning names it.
        for attempt in range(min(len(self.clips), 16)):
            item = (index + attempt) % len(self.clips)
            plan = self.plan(item, attempt)
            try:
                return self.load(plan)
            except Exception as exc:  # noqa: BLE001 - see above: any decode failure skips the sample
                self.load_failures += 1
                logger.warning("could not load a sample of clip %s (%s); using another clip "
                               "(%d load failures so far in this process)",
                               self.clips[item].name, exc, self.load_failures)
        raise InputError(f"16 clips in a row failed to load, starting at {self.clips[index].name}; check the data")
