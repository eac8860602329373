"""The reference still: the character as the model should paint it.

Either rendered from the scene at a chosen frame, with a chosen engine, at the output
size and through the same camera frame as the keypoints (camera.output_frame), or
read from a user's image file. Both come back as an (H, W, 3) uint8 RGB array; the job
writer saves it as reference.png.

Rendering changes render settings for the duration of one still and restores every one
of them afterwards, also when the render fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import bpy
import numpy as np

from pose_bridge.image_io import flatten_to_rgb8

from ..errors import AddonError
from ..results.importing import RESULT_PROPERTY
from .camera import output_frame
from .projection import restored_frame

log = logging.getLogger(__name__)

ENGINES = ("SCENE", "WORKBENCH", "CYCLES", "EEVEE")



def engine_id(engine: str) -> str:
    """Blender's render engine id for one of ENGINES on this Blender version."""
    choice = engine.upper()
    if choice == "WORKBENCH":
        return "BLENDER_WORKBENCH"
    if choice == "CYCLES":
        return "CYCLES"
    if choice == "EEVEE":
        # 4.2-4.5 call the EEVEE they ship "BLENDER_EEVEE_NEXT"; 5.0 renamed it back.
        return "BLENDER_EEVEE" if bpy.app.version >= (5, 0, 0) else "BLENDER_EEVEE_NEXT"
    raise AddonError(f"unknown render engine '{engine}'; use one of {', '.join(ENGINES)}")


class _Settings:
    """Remembers attribute values as they are changed, and puts them back in the same order."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        if not hasattr(owner, name):
            return  # a setting this Blender version does not have
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def restore(self) -> None:
        # Same order as set: on 5.0 media_type must be back to VIDEO before file_format
        # can be FFMPEG again.
        for owner, name, value in self._saved:
            try:
                setattr(owner, name, value)
            except (TypeError, ValueError, AttributeError) as exc:  # keep restoring the rest
                log.warning("could not restore %s: %s", name, exc)
        self._saved.clear()


@contextlib.contextmanager
def _still_settings(scene: bpy.types.Scene, camera: bpy.types.Object, engine: str, filepath: str) -> Iterator[None]:
    render = scene.render
    settings = _Settings()
    hidden = []
    try:
        settings.set(scene, "camera", camera)
        if engine.upper() != "SCENE":
            settings.set(render, "engine", engine_id(engine))
        settings.set(render, "filepath", filepath)
        settings.set(render, "use_file_extension", True)
        image = render.image_settings
        settings.set(image, "media_type", "IMAGE")  # 5.0+: before file_format
        settings.set(image, "file_format", "PNG")
        settings.set(image, "color_mode", "RGB")
        settings.set(image, "color_depth", "8")
        settings.set(image, "compression", 15)
        # Only the 3D scene: no render region, no burnt-in stamp, no stereo pair, and no
        # compositor or sequencer output (they may hold results imported earlier).
        settings.set(render, "use_border", False)
        settings.set(render, "use_stamp", False)
        settings.set(render, "use_multiview", False)
        settings.set(render, "film_transparent", False)
        settings.set(render, "use_motion_blur", False)  # the reference is one sharp pose
        settings.set(render, "use_compositing", False)
        settings.set(render, "use_sequencer", False)
        for obj in scene.objects:
            # Results imported by the add-on (a plane filling the camera frame) would
            # otherwise be all the still shows.
            if obj.get(RESULT_PROPERTY) is not None and not obj.hide_render:
                obj.hide_render = True
                hidden.append(obj)
        yield
    finally:
        for obj in hidden:
            obj.hide_render = False
        settings.restore()


def render_still(
    scene: bpy.types.Scene,
    camera: bpy.types.Object,
    frame: int,
    width: int,
    height: int,
    engine: str = "SCENE",
) -> np.ndarray:
    """Render one still of scene through camera at frame, width x height; (H, W, 3) uint8 RGB.

    engine: "SCENE" (the scene's own engine and its settings), "WORKBENCH", "CYCLES" or
    "EEVEE". Render settings, the scene camera and the current frame are restored after.
    """
    if camera.type != "CAMERA":
        raise AddonError(f"'{camera.name}' is not a camera; pick a camera")
    with tempfile.TemporaryDirectory(prefix="animate_anyone_still_") as tmp:
        filepath = os.path.join(tmp, "still")
        with (
            restored_frame(scene),
            output_frame(scene, width, height),
            _still_settings(scene, camera, engine, filepath),
        ):
            scene.frame_set(frame)
            log.info("rendering the reference still of frame %d with %s at %dx%d", frame,
                     scene.render.engine, width, height)
            try:
                bpy.ops.render.render(write_still=True, scene=scene.name)
            except RuntimeError as exc:
                raise AddonError(
                    f"rendering the reference still failed ({exc}); try another engine, or use an image file"
                ) from exc
        written = Path(filepath + ".png")
        if not written.is_file():
            raise AddonError(
                f"rendering the reference still wrote no image (engine {engine}); try another engine, "
                f"or use an image file"
            )
        rgb = load_image(written)
    if rgb.shape[:2] != (height, width):
        raise AddonError(f"the reference still came out {rgb.shape[1]}x{rgb.shape[0]}, not {width}x{height}")
    return rgb


def _linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * np.power(values, 1.0 / 2.4) - 0.055)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Any image Blender can read, as (H, W, 3) uint8 RGB (transparency over white).

    Read through Blender's own image loader, because Blender's Python has no Pillow.
    """
    path = Path(bpy.path.abspath(str(path)))
    if not path.is_file():
        raise AddonError(f"reference image {path} does not exist; pick an image file of the character")
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as exc:
        raise AddonError(f"cannot read {path} as an image ({exc}); use a PNG or JPEG file") from exc
    try:
        width, height = image.size
        if width == 0 or height == 0:
            raise AddonError(f"{path} has no pixels; use a PNG or JPEG file")
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        pixels = pixels.reshape(height, width, image.channels)
        # Byte images hold their stored (display) values; float images are scene linear.
        if image.is_float:
            colour = 3 if image.channels >= 3 else 1
            pixels[..., :colour] = _linear_to_srgb(pixels[..., :colour])
        # Blender's rows go bottom-up; images are stored top-down. Grey, alpha over white:
        # the one rule of every image reader (pose_bridge.image_io.flatten_to_rgb8).
        return flatten_to_rgb8(np.flipud(pixels), str(path))
    finally:
        bpy.data.images.remove(image)
