"""Bringing a finished (or cancelled) job's video back into the scene.

Three ways, each starting at the job's first frame so the video lines up with the
animation that drove it:

- "PLANE": a plane parented to the camera that exactly fills its frame, with the video
  as an emission texture (what the camera sees is the generated video);
- "STRIP": a movie strip in the sequencer, on the lowest channel free over its frames;
- "COMPOSITOR": a movie clip node in the compositor.

A cancelled run has frames but no video: then the frame files are used as an image
sequence. Must run on Blender's main thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import bpy
from mathutils import Matrix, Vector

from pose_bridge.job import JobPaths, read_settings

from ..errors import AddonError

IMPORT_MODES = ("PLANE", "STRIP", "COMPOSITOR", "NONE")
# Custom property on imported planes (reference.py hides such objects when rendering a still).
RESULT_PROPERTY = "animate_anyone_result"


@dataclass
class JobMedia:
    """What a job folder has to show: a video, or else numbered frame files."""

    name: str
    root: Path
    frame_start: int
    frame_count: int
    video: Path | None
    frames: list[Path]

    @property
    def first_file(self) -> Path:
        return self.video if self.video is not None else self.frames[0]


def job_media(job_dir: str | Path) -> JobMedia:
    """The video (or frames) of a job folder; AddonError saying what to do when there is none."""
    paths = JobPaths(Path(job_dir))
    settings = read_settings(paths.root)
    video = None
    if paths.result.is_file():
        try:
            result = json.loads(paths.result.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            result = {}
        if result.get("video"):
            candidate = paths.root / result["video"]
            video = candidate if candidate.is_file() else None
    if video is None and paths.video.is_file():
        video = paths.video
    # Frames are numbered from 0001 without gaps; a cancelled run keeps the leading ones.
    frames = []
    while paths.frame(len(frames)).is_file():
        frames.append(paths.frame(len(frames)))
    if video is None and not frames:
        raise AddonError(
            f"The job {paths.root} has no result yet (no {paths.video.name} and no frames in "
            f"{paths.frames}): run Generate, or `python -m animate_backend run {paths.root}`"
        )
    count = settings.num_frames if video is not None else len(frames)
    return JobMedia(paths.root.name, paths.root, settings.frame_start, count, video, frames)


def import_result(scene, job_dir, mode: str, camera=None, distance: float | None = None):
    """Import a job's result as mode; returns the object, strip or node made (None for "NONE")."""
    if mode not in IMPORT_MODES:
        raise AddonError(f"unknown import mode {mode!r}; use one of {', '.join(IMPORT_MODES)}")
    if mode == "NONE":
        return None
    media = job_media(job_dir)
    if mode == "PLANE":
        camera = camera or scene.camera
        if camera is None or camera.type != "CAMERA":
            raise AddonError("Importing as a plane needs a camera: set the scene's camera, or import as a strip")
        return import_plane(scene, media, camera, distance)
    if mode == "STRIP":
        return import_strip(scene, media)
    return import_compositor_node(scene, media)


# ---------------------------------------------------------------- plane


def camera_frame_corners(scene, camera, distance: float) -> list[Vector]:
    """The camera frame's corners at `distance` in front of the camera, in camera space.

    Camera.view_frame applies the render aspect, sensor fit and lens shift; its corners
    lie at some depth, so perspective frames are scaled to the wanted depth. Order:
    top-left, bottom-left, bottom-right, top-right (counter-clockwise seen from the
    camera, so the face's normal points at it).
    """
    data = camera.data
    if data.type == "PANO":
        raise AddonError("A panoramic camera has no flat frame to fill: use a perspective or orthographic camera")
    top_right, bottom_right, bottom_left, top_left = data.view_frame(scene=scene)
    corners = []
    for corner in (top_left, bottom_left, bottom_right, top_right):
        if data.type == "ORTHO":
            corners.append(Vector((corner.x, corner.y, -distance)))
        else:
            corners.append(corner * (distance / -corner.z))
    return corners


def default_plane_distance(camera) -> float:
    """In front of everything the camera sees, but well inside its clipping range."""
    data = camera.data
    return min(max(1.0, data.clip_start * 10.0), (data.clip_start + data.clip_end) * 0.5)


def _load_image(media: JobMedia):
    image = bpy.data.images.load(str(media.first_file), check_existing=True)
    image.source = "MOVIE" if media.video is not None else "SEQUENCE"
    return image


def import_plane(scene, media: JobMedia, camera, distance: float | None = None):
    distance = default_plane_distance(camera) if distance is None else float(distance)
    if not camera.data.clip_start < distance < camera.data.clip_end:
        raise AddonError(
            f"plane distance {distance} is outside the camera's clipping range "
            f"({camera.data.clip_start}-{camera.data.clip_end}); choose a distance inside it"
        )
    name = f"Animate {media.name}"
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(c) for c in camera_frame_corners(scene, camera, distance)], [], [(0, 1, 2, 3)])
    uv_layer = mesh.uv_layers.new(name="UVMap")
    for loop, uv in zip(mesh.loops, ((0, 1), (0, 0), (1, 0), (1, 1))):
        uv_layer.data[loop.index].uv = uv
    mesh.update()

    mesh.materials.append(_video_material(name, media))
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    # Parented to the camera, the plane follows an animated camera. The parent inverse
    # undoes the camera's own scale, which the camera frame does not have.
    obj.parent = camera
    for view_layer in scene.view_layers:
        view_layer.update()  # matrix_world is stale right after a script changed the camera
    scale = camera.matrix_world.to_scale()
    obj.matrix_parent_inverse = Matrix.Diagonal((1.0 / scale.x, 1.0 / scale.y, 1.0 / scale.z, 1.0))
    # Marks it as a result: the reference still is rendered without it.
    obj[RESULT_PROPERTY] = str(media.root)
    if hasattr(obj, "visible_shadow"):
        obj.visible_shadow = False  # a screen, not a wall: it casts no shadow on the scene
    return obj


def _video_material(name: str, media: JobMedia):
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True  # always on (and deprecated) from 5.0
    tree = material.node_tree
    tree.nodes.clear()
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.image = _load_image(media)
    texture.extension = "CLIP"
    user = texture.image_user
    user.frame_duration = media.frame_count
    user.frame_start = media.frame_start  # scene frame showing the video's first frame
    user.frame_offset = 0
    user.use_auto_refresh = True
    user.use_cyclic = False
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    texture.location, emission.location, output.location = (-400, 0), (-100, 0), (150, 0)
    tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


# ---------------------------------------------------------------- sequencer


def _strip_collection(sequence_editor):
    # 5.0 removed `sequences`; 4.2 has only `sequences`.
    return sequence_editor.strips if hasattr(sequence_editor, "strips") else sequence_editor.sequences


def free_channel(strips, frame_start: int, frame_end: int) -> int:
    """The lowest channel with no strip over frames [frame_start, frame_end)."""
    used = {
        strip.channel
        for strip in strips
        if strip.frame_final_start < frame_end and strip.frame_final_end > frame_start
    }
    channel = 1
    while channel in used:
        channel += 1
    if channel > 128:
        raise AddonError("every sequencer channel is taken over these frames; free one and import again")
    return channel


def import_strip(scene, media: JobMedia):
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strips = _strip_collection(editor)
    channel = free_channel(strips, media.frame_start, media.frame_start + media.frame_count)
    name = f"Animate {media.name}"
    if media.video is not None:
        return strips.new_movie(name, str(media.video), channel, media.frame_start)
    strip = strips.new_image(name, str(media.frames[0]), channel, media.frame_start)
    for frame in media.frames[1:]:
        strip.elements.append(frame.name)
    return strip


# ---------------------------------------------------------------- compositor


def _compositor_tree(scene):
    """(node tree, made_now): 5.0's compositing node group, or 4.x's scene.node_tree."""
    if hasattr(scene, "compositing_node_group"):
        tree = scene.compositing_node_group
        if tree is not None:
            return tree, False
        tree = bpy.data.node_groups.new(f"{scene.name} Compositing", "CompositorNodeTree")
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        scene.compositing_node_group = tree
        return tree, True
    made = not scene.use_nodes or scene.node_tree is None
    scene.use_nodes = True
    return scene.node_tree, made


def import_compositor_node(scene, media: JobMedia):
    clip = bpy.data.movieclips.load(str(media.first_file), check_existing=True)
    clip.frame_start = media.frame_start  # scene frame at which the clip's first frame plays
    tree, made_now = _compositor_tree(scene)
    node = tree.nodes.new("CompositorNodeMovieClip")
    node.clip = clip
    node.label = f"Animate {media.name}"
    node.location = (-300, 300)
    for other in tree.nodes:
        other.select = False
    node.select = True
    tree.nodes.active = node
    if made_now and hasattr(scene, "compositing_node_group"):
        # A new 5.0 compositor has no output yet: show the clip.
        output = tree.nodes.new("NodeGroupOutput")
        output.location = (100, 300)
        tree.links.new(node.outputs["Image"], output.inputs[0])
    return node
