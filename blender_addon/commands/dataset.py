"""Synthetic training data from the user's own rigged character.

(About 450 lines: one command, its settings and the take loop; the random poses and cameras
it draws are only meaningful together.)

    python -m blender_addon.commands.dataset SCENE.blend --out DIR [--takes 16 --frames 24 --size 512x512 ...]
    python -m blender_addon.commands.dataset --demo-character --out DIR ...   (the demo's character, blender_addon.commands.demo_scene)

renders the character of SCENE.blend in many poses, from many cameras, under varied
light, and writes each take as a folder of frames with the exact keypoints of every frame,
plus a manifest that `animate_backend.train` reads:

    DIR/manifest.jsonl                 one line per take (frames, keypoints, name, source, camera)
    DIR/take_0000/frames/0001.png ...  the rendered frames
    DIR/take_0000/poses.json           pose_bridge sequence file (OpenPose keypoints per frame)

A take is either a stretch of the scene's animation ("action" takes) or a smooth motion
through random poses ("random" takes): every pose bone with a parent turns by a small
random rotation on top of the rest pose or a random frame of the animation, within
--max-angle per axis (a third of it about the bone's own axis, the twist), never about
a locked rotation axis, and within the bone's IK limits where it has them; the root bone
stays put. Each take gets its own camera on an orbit round the character (azimuth from the
scene camera's side, elevation and distance within ranges, the whole character in frame),
its own sun and background colour.

Keypoints come from the add-on's own projection (blender_addon.export.projection): the points a
Generate would send to the model, here with the pictures that belong to them. Frames are
rendered with the add-on's still renderer (Workbench by default: fast and headless; or
Cycles with few samples). The .blend file is never saved, and `generate_dataset` puts back
what it changes (pose, animation, camera and light objects, world colour, render settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from mathutils import Euler, Quaternion, Vector

from pose_bridge.cli_args import add_setting_arguments, number, whole
from pose_bridge.files import atomic_write_bytes
from pose_bridge.image_io import write_png
from pose_bridge.keypoints import PoseSequence
from pose_bridge.openpose_json import write_sequence

from ..export import projection, reference, rig_mapping
from ..export.camera import output_frame
from ..errors import AddonError

log = logging.getLogger(__name__)

CAMERA_NAME = "Dataset Camera"
SUN_NAME = "Dataset Sun"


@dataclass
class DatasetSettings:
    takes: int = 16
    frames: int = 24  # frames per take
    width: int = 512
    height: int = 512
    engine: str = "WORKBENCH"  # or "CYCLES" (with `samples`), "SCENE"
    samples: int = 8
    random_fraction: float = 0.5  # share of takes with random poses (all when the rig has no animation)
    key_poses: int = 3  # random takes move through this many random poses
    max_angle: float = 25.0  # degrees per axis for random poses
    azimuth: tuple[float, float] = (-50.0, 50.0)  # degrees from the scene camera's side (or the front, -Y)
    elevation: tuple[float, float] = (-5.0, 25.0)  # degrees above the character's centre
    margin: tuple[float, float] = (1.15, 1.6)  # frame height over character size
    seed: int = 0
    preset: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    hands: bool = True
    face: bool = True
    occlusion: bool = False

    def validate(self) -> None:
        if self.takes < 1 or self.frames < 1:
            raise AddonError("--takes and --frames must be at least 1")
        projection.check_size(self.width, self.height)
        if not 0.0 <= self.random_fraction <= 1.0:
            raise AddonError("--random-fraction must be between 0 and 1")
        if self.key_poses < 1 or not 0.0 <= self.max_angle <= 90.0:
            raise AddonError("--key-poses must be at least 1 and --max-angle between 0 and 90 degrees")
        if self.margin[0] < 1.0 or self.margin[1] < self.margin[0]:
            raise AddonError("--margin needs 1 <= MIN <= MAX (frame height over the character's size)")
        reference.engine_id(self.engine) if self.engine.upper() != "SCENE" else None


@dataclass
class CameraSetup:
    """One take's camera, stored in the manifest so a take can be re-projected later."""

    location: tuple[float, float, float]
    rotation_quaternion: tuple[float, float, float, float]
    lens: float
    sensor_width: float
    sensor_fit: str


# ---------------------------------------------------------------- poses


def _animation_range(scene: bpy.types.Scene, armature: bpy.types.Object) -> tuple[int, int] | None:
    """Frames of the armature's action (or the scene range when it has one), None without animation."""
    data = armature.animation_data
    action = data.action if data is not None else None
    if action is None:
        return None
    start, end = (int(round(v)) for v in action.frame_range)
    return (start, end) if end > start else (scene.frame_start, scene.frame_end)


def _random_rotation(pose_bone: bpy.types.PoseBone, rng: np.random.Generator, max_angle: float) -> Quaternion:
    """A small random rotation in the bone's own axes: Y (along the bone) twists less."""
    limits = np.radians([max_angle, max_angle / 3.0, max_angle])
    angles = rng.uniform(-limits, limits)
    for axis in range(3):
        if pose_bone.lock_rotation[axis]:
            angles[axis] = 0.0
    for axis, name in enumerate("xyz"):
        if getattr(pose_bone, f"use_ik_limit_{name}", False):
            low, high = getattr(pose_bone, f"ik_min_{name}"), getattr(pose_bone, f"ik_max_{name}")
            angles[axis] = float(np.clip(angles[axis], low, high))
    return Euler(tuple(angles), "XYZ").to_quaternion()


class PoseControl:
    """Sets pose-bone rotations directly, with the animation detached; restores everything."""

    def __init__(self, armature: bpy.types.Object) -> None:
        self.armature = armature
        data = armature.animation_data
        self._action = data.action if data is not None else None
        self._use_nla = data.use_nla if data is not None else None
        self._saved = {
            b.name: (b.rotation_mode, tuple(b.rotation_quaternion), tuple(b.rotation_euler),
                     tuple(b.rotation_axis_angle), tuple(b.location), tuple(b.scale))
            for b in armature.pose.bones
        }

    def basis(self) -> dict[str, tuple[Vector, Quaternion, Vector]]:
        """Each bone's current local (location, rotation, scale), whatever its rotation mode."""
        return {b.name: b.matrix_basis.decompose() for b in self.armature.pose.bones}

    def detach(self) -> None:
        data = self.armature.animation_data
        if data is not None:
            data.action = None
            data.use_nla = False

    def apply(self, basis: dict[str, tuple[Vector, Quaternion, Vector]], offsets: dict[str, Quaternion]) -> None:
        for bone in self.armature.pose.bones:
            location, rotation, scale = basis[bone.name]
            bone.rotation_mode = "QUATERNION"
            bone.location, bone.scale = location, scale
            bone.rotation_quaternion = rotation @ offsets.get(bone.name, Quaternion())

    def restore(self) -> None:
        data = self.armature.animation_data
        if data is not None:
            data.action = self._action
            data.use_nla = self._use_nla
        for bone in self.armature.pose.bones:
            mode, quaternion, euler, axis_angle, location, scale = self._saved[bone.name]
            bone.rotation_mode = mode
            bone.rotation_quaternion, bone.rotation_euler = quaternion, euler
            bone.rotation_axis_angle = axis_angle
            bone.location, bone.scale = location, scale


def random_offsets(armature: bpy.types.Object, rng: np.random.Generator, max_angle: float) -> dict[str, Quaternion]:
    """A random rotation for every pose bone that has a parent (the root stays as it is)."""
    return {b.name: _random_rotation(b, rng, max_angle) for b in armature.pose.bones if b.parent is not None}


def _interpolated(keys: list[dict[str, Quaternion]], t: float) -> dict[str, Quaternion]:
    """Offsets at t in [0, 1] along the key poses, slerped between neighbours (smooth motion)."""
    if len(keys) == 1:
        return keys[0]
    position = t * (len(keys) - 1)
    index = min(int(position), len(keys) - 2)
    local = position - index
    # Smoothstep: eases in and out of each key pose instead of turning sharply at it.
    local = local * local * (3.0 - 2.0 * local)
    return {name: keys[index][name].slerp(keys[index + 1][name], local) for name in keys[index]}


# ---------------------------------------------------------------- cameras and lights


def character_bounds(armature: bpy.types.Object) -> tuple[Vector, float]:
    """(centre, size): the middle of the evaluated bones' extent and its largest side."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = armature.evaluated_get(depsgraph)
    frames = projection.bone_frames(evaluated)
    points = np.array([f.head for f in frames.values()] + [f.tail for f in frames.values()])
    low, high = points.min(axis=0), points.max(axis=0)
    return Vector(((low + high) / 2.0).tolist()), float(max(np.max(high - low), 1e-3))


def _base_azimuth(scene: bpy.types.Scene, centre: Vector) -> float:
    """Angle (about Z) from the character to the scene camera, or to the front (-Y) without one."""
    if scene.camera is not None:
        offset = scene.camera.matrix_world.translation - centre
        if offset.xy.length > 1e-6:
            return math.atan2(offset.y, offset.x)
    return -math.pi / 2.0


def place_camera(scene: bpy.types.Scene, camera: bpy.types.Object, centre: Vector, size: float,
                 settings: DatasetSettings, rng: np.random.Generator) -> CameraSetup:
    """Put `camera` on a random orbit point looking at `centre`, far enough to frame `size`."""
    azimuth = _base_azimuth(scene, centre) + math.radians(rng.uniform(*settings.azimuth))
    elevation = math.radians(rng.uniform(*settings.elevation))
    margin = rng.uniform(*settings.margin)
    data = camera.data
    # With sensor fit AUTO the sensor width spans the larger side of the image; the
    # character must fit the smaller one.
    half_large = math.atan(data.sensor_width / (2.0 * data.lens))
    half_small = math.atan(math.tan(half_large) * min(settings.width, settings.height)
                           / max(settings.width, settings.height))
    distance = (size * margin / 2.0) / math.tan(half_small)
    direction = Vector((math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                        math.sin(elevation)))
    camera.location = centre + direction * distance
    camera.rotation_mode = "QUATERNION"
    camera.rotation_quaternion = (-direction).to_track_quat("-Z", "Y")
    return CameraSetup(tuple(camera.location), tuple(camera.rotation_quaternion), data.lens,
                       data.sensor_width, data.sensor_fit)


def light_scene(scene: bpy.types.Scene, sun: bpy.types.Object, rng: np.random.Generator) -> None:
    """A sun from a random side and height (Cycles, EEVEE), the studio light turned to a
    random side (Workbench), and a random, mostly grey, background."""
    sun.rotation_euler = (math.radians(rng.uniform(10.0, 60.0)), 0.0, math.radians(rng.uniform(0.0, 360.0)))
    sun.data.energy = float(rng.uniform(2.0, 5.0))
    shading = scene.display.shading
    if hasattr(shading, "studiolight_rotate_z"):
        shading.studiolight_rotate_z = math.radians(rng.uniform(-180.0, 180.0))
    grey = rng.uniform(0.25, 0.85)
    scene.world.color = tuple(float(np.clip(grey + rng.uniform(-0.08, 0.08), 0.0, 1.0)) for _ in range(3))


# ---------------------------------------------------------------- the generator


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(entry) + "\n" for entry in entries).encode("utf-8"))


def generate_dataset(
    scene: bpy.types.Scene, armature: bpy.types.Object, out_dir: str | Path, settings: DatasetSettings
) -> Path:
    """Render `settings.takes` takes of `armature` into out_dir; returns the manifest path."""
    settings.validate()
    if armature.type != "ARMATURE":
        raise AddonError(f"'{armature.name}' is not an armature; pick the character's armature")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = rig_mapping.resolve_mapping(armature, settings.overrides, settings.preset)
    rig_mapping.check_required(mapping, armature)
    rng = np.random.default_rng(settings.seed)
    animation = _animation_range(scene, armature)
    random_takes = int(round(settings.takes * settings.random_fraction)) if animation else settings.takes
    kinds = ["random"] * random_takes + ["action"] * (settings.takes - random_takes)
    rng.shuffle(kinds)

    camera = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
    if scene.camera is not None and scene.camera.type == "CAMERA":
        camera.data.lens, camera.data.sensor_width = scene.camera.data.lens, scene.camera.data.sensor_width
    sun = bpy.data.objects.new(SUN_NAME, bpy.data.lights.new(SUN_NAME, "SUN"))
    scene.collection.objects.link(camera)
    scene.collection.objects.link(sun)
    cycles_samples = getattr(getattr(scene, "cycles", None), "samples", None)
    if cycles_samples is not None:
        scene.cycles.samples = settings.samples
    own_world = scene.world is None
    if own_world:
        scene.world = bpy.data.worlds.new("Dataset World")
    world_colour = tuple(scene.world.color)
    studio_rotation = getattr(scene.display.shading, "studiolight_rotate_z", None)
    control = PoseControl(armature)
    frame_before = scene.frame_current
    entries = []
    try:
        for take, kind in enumerate(kinds):
            name = f"take_{take:04d}"
            entry = _render_take(scene, armature, camera, sun, mapping, control, animation, kind,
                                 out_dir / name, settings, rng)
            entry["name"] = name
            entries.append(entry)
            _write_manifest(out_dir / "manifest.jsonl", [
                {**e, "frames": f"{e['name']}/frames", "keypoints": f"{e['name']}/poses.json"} for e in entries
            ])
            log.info("take %d of %d (%s) written to %s", take + 1, len(kinds), kind, out_dir / name)
    finally:
        control.restore()
        if cycles_samples is not None:
            scene.cycles.samples = cycles_samples
        scene.world.color = world_colour
        if studio_rotation is not None:
            scene.display.shading.studiolight_rotate_z = studio_rotation
        if own_world:
            world = scene.world
            scene.world = None
            bpy.data.worlds.remove(world)
        camera_data, sun_data = camera.data, sun.data
        bpy.data.objects.remove(camera)
        bpy.data.objects.remove(sun)
        bpy.data.cameras.remove(camera_data)
        bpy.data.lights.remove(sun_data)
        scene.frame_set(frame_before)
    return out_dir / "manifest.jsonl"


def _render_take(scene, armature, camera, sun, mapping, control: PoseControl, animation, kind: str,
                 folder: Path, settings: DatasetSettings, rng: np.random.Generator) -> dict[str, Any]:
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    frames = settings.frames
    if kind == "action":
        start, end = animation
        length = end - start + 1
        first = start + int(rng.integers(0, max(1, length - frames + 1)))
        # Shorter animations loop, as most game and film cycles are made to.
        scene_frames = [start + (first - start + i) % length for i in range(frames)]
        control.restore()
        scene.frame_set(scene_frames[0])
    else:
        control.restore()
        if animation is not None:
            scene.frame_set(int(rng.integers(animation[0], animation[1] + 1)))
        basis = control.basis()  # the rest pose, or the animation's pose at a random frame
        control.detach()
        keys = [random_offsets(armature, rng, settings.max_angle) for _ in range(settings.key_poses)]
        scene_frames = [scene.frame_current] * frames
        control.apply(basis, keys[0])
    centre, size = character_bounds(armature)
    setup = place_camera(scene, camera, centre, size, settings, rng)
    light_scene(scene, sun, rng)

    projector = projection.Projector(scene, armature, camera, mapping, settings.width, settings.height,
                                     hands=settings.hands, face=settings.face, occlusion=settings.occlusion)
    poses = []
    for i, frame in enumerate(scene_frames):
        if kind == "random":
            control.apply(basis, _interpolated(keys, i / max(1, frames - 1)))
        # The projector sets the frame (a no-op for the detached random poses) and projects
        # inside the render's camera frame; the still renders that same frame.
        with output_frame(scene, settings.width, settings.height):
            poses.append(projector.pose_at(frame))
        rgb = reference.render_still(scene, camera, frame, settings.width, settings.height, settings.engine)
        write_png(folder / "frames" / f"{i + 1:04d}.png", rgb)
    fps = scene.render.fps / scene.render.fps_base
    write_sequence(PoseSequence(poses, fps=fps), folder / "poses.json")
    source = f"action:{armature.animation_data.action.name}" if kind == "action" else "random"
    return {"source": source, "scene_frames": scene_frames, "camera": asdict(setup)}


# ---------------------------------------------------------------- command line


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (e.g. -45,45), got {text!r}") from exc
    if not (math.isfinite(low) and math.isfinite(high)):
        raise argparse.ArgumentTypeError(f"MIN and MAX must be finite numbers, got {text!r}")
    if high < low:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX in {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    from .shot_options import mapping_item, size

    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.commands.dataset",
        description="Render a rigged character in many poses, cameras and lights, with exact keypoints, "
                    "as training data for animate_backend.train.",
    )
    parser.add_argument("blend", nargs="?", help="the .blend file with the rigged character")
    parser.add_argument("--demo-character", action="store_true",
                        help="render the demo's character (make demo) instead of a .blend file")
    parser.add_argument("--out", required=True, help="output folder (manifest.jsonl and one folder per take)")
    parser.add_argument("--scene", help="scene name (default: the file's active scene)")
    parser.add_argument("--armature", help="armature object (default: the scene's only armature)")
    d = DatasetSettings()
    parser.add_argument("--takes", type=whole(at_least=1), default=d.takes, help="number of takes (clips)")
    parser.add_argument("--frames", type=whole(at_least=1), default=d.frames, help="frames per take")
    parser.add_argument("--size", type=size, default=(d.width, d.height), help="WIDTHxHEIGHT, multiples of 8")
    parser.add_argument("--engine", default=d.engine, choices=["WORKBENCH", "CYCLES", "EEVEE", "SCENE"])
    parser.add_argument("--samples", type=whole(at_least=1), default=d.samples, help="Cycles samples")
    parser.add_argument("--random-fraction", type=number(at_least=0, at_most=1), default=d.random_fraction,
                        help="share of takes with random poses (the rest play the scene's animation)")
    parser.add_argument("--key-poses", type=whole(at_least=1), default=d.key_poses, help="random poses a random take moves through")
    parser.add_argument("--max-angle", type=number(at_least=0, at_most=180), default=d.max_angle, help="largest random bone turn per axis, degrees")
    parser.add_argument("--azimuth", type=_range, default=d.azimuth, help="camera azimuth range MIN,MAX in degrees")
    parser.add_argument("--elevation", type=_range, default=d.elevation, help="camera elevation range MIN,MAX")
    parser.add_argument("--margin", type=_range, default=d.margin, help="frame size over character size MIN,MAX")
    parser.add_argument("--seed", type=whole(at_least=0), default=d.seed)
    parser.add_argument("--preset", default=d.preset, help="bone-name preset: auto, none, or a preset name")
    parser.add_argument("--map", dest="mapping", action="append", type=mapping_item, default=[],
                        metavar="KEYPOINT=BONE", help="map a keypoint to a bone (repeatable)")
    add_setting_arguments(parser, ("draw_hands", "draw_face"))
    parser.add_argument("--occlusion", action="store_true", help="drop keypoints hidden behind the character")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from pose_bridge.errors import PoseBridgeError

    from .cli import open_blend, pick_scene

    settings = DatasetSettings(
        takes=args.takes, frames=args.frames, width=args.size[0], height=args.size[1], engine=args.engine,
        samples=args.samples, random_fraction=args.random_fraction, key_poses=args.key_poses,
        max_angle=args.max_angle, azimuth=args.azimuth, elevation=args.elevation, margin=args.margin,
        seed=args.seed, preset=args.preset, overrides=dict(args.mapping), hands=args.draw_hands,
        face=args.draw_face, occlusion=args.occlusion,
    )
    if (args.blend is None) == (not args.demo_character):
        print("error: give a .blend file or --demo-character (one of them)", file=sys.stderr)
        return 1
    try:
        if args.demo_character:
            from . import demo_scene

            bpy.ops.wm.read_factory_settings(use_empty=True)
            demo_scene.build_demo_scene(width=settings.width, height=settings.height)
        else:
            open_blend(args.blend)
        scene = pick_scene(args.scene)
        armature = projection.resolve_armature(scene, args.armature)
        manifest = generate_dataset(scene, armature, args.out, settings)
    except (AddonError, PoseBridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
