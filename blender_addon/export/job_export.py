"""Writing a job folder from a scene: the add-on's half of the job (README.md).

(About 480 lines: the synchronous export and JobExport, its step-by-step twin for the UI, share
every helper here and must stay the same export.)

    options = ExportOptions(armature="Hero", frame_start=1, frame_end=48, job=JobSettings(model="/models/aa"))
    paths = export_job(bpy.context.scene, options, "/shots/sh010/job")

writes job.json, poses.json, the drawn skeletons in poses/, reference.png and, for a
rendered reference, reference_pose.json (the armature's keypoints at the reference
frame, for retargeting): the files the add-on owns (JobPaths.export_files). They are written next
to the job folder first and moved in when all are complete, job.json last, so a failed
export leaves the previous job as it was. Exporting a shot again replaces only those
files: the backend's out/ (finished frames, saved latents) and anything a user added stay,
and the backend's own resume decides which frames still match the new job. JobExport
does the same in small steps, for the Generate operator's timer (Blender stays
responsive and the export can be cancelled).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import bpy
import numpy as np

from pose_bridge import drawing, openpose_json
from pose_bridge.errors import PoseBridgeError
from pose_bridge.files import make_partial_dir, partial_prefix, remove_partial_dirs_of, remove_partial_files
from pose_bridge.job import JobPaths, JobSettings, write_job

from . import projection, reference
from .camera import output_frame
from ..errors import AddonError

log = logging.getLogger(__name__)

REFERENCE_MODES = ("render", "image")


@dataclass
class ExportOptions:
    """Everything export_job needs besides the scene. Empty / None values mean "the scene's".

    armature: object name; "" = the scene's only armature.
    camera: object name; None or "" = the scene's camera.
    frame_start / frame_end: None = the scene's frame range.
    width / height: multiples of 8; None = the render size (with its percentage) rounded
        to multiples of 8 (see output_size).
    mapping: bone-mapping overrides on top of the detected preset (rig_mapping.resolve_mapping):
        {"left_wrist": "hand.L", "right_hand.index_1": ("f_index.01.R", "tail"), "nose": None, ...}
        or the panel's {"body": {...}, "left_hand": {...}, "right_hand": {...}}.
    preset: "auto", "none" or a pose_bridge.bone_presets.PRESETS name.
    neck: "shoulders" (the mean of the shoulders, DWPose's rule) or "bone" (the rig's neck bone).
    reference: "render" (a still of the scene at reference_frame with engine) or "image"
        (image_path; reference_pose_path optionally gives its skeleton for retargeting).
    engine: "SCENE", "WORKBENCH", "CYCLES" or "EEVEE".
    job: the generation settings (model, steps, guidance, seed, windows, sampler, retarget,
        hands/face, device, precision); the skeletons are drawn with its draw_hands/draw_face.
    """

    armature: str = ""
    camera: str | None = None
    frame_start: int | None = None
    frame_end: int | None = None
    width: int | None = None
    height: int | None = None
    mapping: dict[str, Any] = field(default_factory=dict)
    preset: str = "auto"
    occlusion: bool = False
    neck: str = "shoulders"
    reference: str = "render"
    reference_frame: int | None = None  # None = frame_start
    engine: str = "SCENE"
    image_path: str = ""
    reference_pose_path: str = ""
    draw_skeletons: bool = True
    # The generation settings as they go into job.json (pose_bridge.settings declares them).
    # Size, frames and fps are filled in from the scene when exporting; provenance gains the
    # blend file, scene, armature and camera.
    job: JobSettings = field(default_factory=JobSettings)


def round_to_8(value: int) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def output_size(scene: bpy.types.Scene) -> tuple[int, int, str]:
    """(width, height, note): the scene's render size with its percentage, rounded to multiples of 8.

    note is "" when no rounding was needed, else says what changed (the panel shows it).
    """
    render = scene.render
    width = max(1, render.resolution_x * render.resolution_percentage // 100)
    height = max(1, render.resolution_y * render.resolution_percentage // 100)
    rounded = round_to_8(width), round_to_8(height)
    note = ""
    if rounded != (width, height):
        note = f"render size {width}x{height} rounded to {rounded[0]}x{rounded[1]} (multiples of 8)"
    return rounded[0], rounded[1], note


def addon_version() -> str:
    """The version in the add-on's blender_manifest.toml ("unknown" without one)."""
    manifest = Path(__file__).resolve().parent.parent / "blender_manifest.toml"
    try:
        return str(tomllib.loads(manifest.read_text(encoding="utf-8")).get("version", "unknown"))
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"


@dataclass
class _Resolved:
    """ExportOptions with every "the scene's" value filled in and checked."""

    armature: bpy.types.Object
    camera: bpy.types.Object
    frame_start: int
    frame_end: int
    width: int
    height: int
    size_note: str


def _resolve(scene: bpy.types.Scene, options: ExportOptions) -> _Resolved:
    armature = projection.resolve_armature(scene, options.armature)
    camera = projection.resolve_camera(scene, options.camera)
    start = scene.frame_start if options.frame_start is None else int(options.frame_start)
    end = scene.frame_end if options.frame_end is None else int(options.frame_end)
    projection.check_frame_range(start, end)
    note = ""
    if options.width is None or options.height is None:
        width, height, note = output_size(scene)
        width = width if options.width is None else int(options.width)
        height = height if options.height is None else int(options.height)
    else:
        width, height = int(options.width), int(options.height)
    projection.check_size(width, height)
    return _Resolved(armature, camera, start, end, width, height, note)


def _project(
    scene, options: ExportOptions, resolved: _Resolved, start: int, end: int,
    progress: Callable[[int, int], None] | None = None,
) -> projection.ProjectionResult:
    return projection.project_sequence(
        scene, resolved.armature, resolved.camera, start, end, resolved.width, resolved.height,
        overrides=options.mapping, preset=options.preset, hands=options.job.draw_hands, face=options.job.draw_face,
        occlusion=options.occlusion, neck=options.neck, progress=progress,
    )


def preview_skeleton(scene: bpy.types.Scene, options: ExportOptions, frame: int | None = None) -> np.ndarray:
    """The skeleton of one frame (default: the current one) drawn at the output size; (H, W, 3) uint8."""
    resolved = _resolve(scene, options)
    frame = scene.frame_current if frame is None else int(frame)
    result = _project(scene, options, resolved, frame, frame)
    pose = result.poses[0]
    return drawing.draw_pose(
        pose, hands=options.job.draw_hands, face=options.job.draw_face,
        stroke_scale=drawing.stroke_scale_for(pose.canvas_width, pose.canvas_height),
    )


def _reference_image(scene, options: ExportOptions, resolved: _Resolved, reference_frame: int) -> np.ndarray:
    mode = options.reference.lower()
    if mode == "render":
        return reference.render_still(
            scene, resolved.camera, reference_frame, resolved.width, resolved.height, options.engine
        )
    if mode == "image":
        if not options.image_path:
            raise AddonError("reference is 'image' but no image file is given; pick an image of the character")
        return reference.load_image(options.image_path)
    raise AddonError(f"unknown reference mode '{options.reference}'; use one of {', '.join(REFERENCE_MODES)}")


def _job_settings(scene, options: ExportOptions, resolved: _Resolved, provenance: dict[str, Any]) -> JobSettings:
    settings = dataclasses.replace(
        options.job,
        width=resolved.width,
        height=resolved.height,
        fps=scene.render.fps / scene.render.fps_base,
        frame_start=resolved.frame_start,
        frame_end=resolved.frame_end,
        output_kinds=list(options.job.output_kinds),
        provenance=provenance,
    )
    try:
        settings.validate()
    except PoseBridgeError as exc:
        raise AddonError(str(exc)) from exc
    return settings


def _check_replaceable(job_dir: Path) -> None:
    """An existing folder is only replaced when it is empty or a job folder: never a user's folder."""
    if not job_dir.exists():
        return
    if not job_dir.is_dir():
        raise AddonError(f"{job_dir} is a file, not a folder; choose another output folder for the job")
    if any(job_dir.iterdir()) and not JobPaths(job_dir).settings.is_file():
        raise AddonError(
            f"{job_dir} already holds files and is not a job folder (no job.json); choose an empty or new "
            f"folder for the job, so that nothing of yours is replaced"
        )


def _install(staged: Path, job_dir: Path) -> None:
    """Move the add-on's files from the finished staging folder into job_dir, job.json last.

    Only JobPaths.export_files are touched: an add-on file the new export does not have (no
    reference_pose.json, no skeleton images) is removed, as it belongs to the old job; out/
    and everything else in job_dir stay. job.json is removed first, so that an export
    interrupted half way leaves a folder the backend refuses ("export the job again")
    rather than old settings over new poses. The one exception in out/ is result.json, the
    record that the *previous* job finished: it goes too, so that nothing (a batch's "done"
    check, the panel) takes the old run for a run of the new job before the backend has run
    it. Frames, latents and the log stay for the backend to judge.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    paths = JobPaths(job_dir)
    paths.settings.unlink(missing_ok=True)
    paths.result.unlink(missing_ok=True)
    for old in paths.export_files():
        name = old.name
        new = staged / name
        if new.is_dir():
            if old.exists():
                aside = job_dir / f"{partial_prefix(name)}old"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(old, aside)
                os.replace(new, old)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(new, old)
        elif new.exists():
            os.replace(new, old)
        elif old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)


class JobExport:
    """export_job in small steps, so that Blender stays responsive and the export can be cancelled.

        export = JobExport(scene, options, "/shots/sh010/job")  # the quick checks; AddonError
        while not export.step(budget_s=0.05):                   # a few frames per call
            done, total = export.progress                       # projected frames
        paths = export.paths

    The Generate operator calls step() from its 0.1 s timer: projecting a long shot of a
    heavy rig takes one scene.frame_set per frame, which would otherwise freeze Blender
    with no progress and no way out. The phases, in order:

        "project"    frames are projected, as many per step as budget_s allows (at least one)
        "reference"  the reference still is rendered (or read): one blocking call
        "write"      the job is written next to job_dir and moved in (_install): one call
        "done"       paths is the job; also "cancelled" and "failed"

    Nothing is written at job_dir before the last step, so a cancel (or an error) leaves no
    half-written folder and an earlier job at job_dir as it was. The scene's current frame
    is put back when the projection ends, and on a cancel or an error during it. Between
    steps the scene sits on the last projected frame; people may work meanwhile, but a
    frame they set then is not kept.
    """

    def __init__(
        self,
        scene: bpy.types.Scene,
        options: ExportOptions,
        job_dir: str | os.PathLike,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        # Everything that can fail without evaluating a frame fails here, at once, with
        # nothing written: a missing armature or camera, unmapped body bones, bad settings.
        self.scene = scene
        self.options = options
        self.job_dir = Path(bpy.path.abspath(str(job_dir))).resolve()
        self.on_progress = progress
        _check_replaceable(self.job_dir)
        self.resolved = _resolve(scene, options)
        self.mode = options.reference.lower()
        if self.mode not in REFERENCE_MODES:
            raise AddonError(
                f"unknown reference mode '{options.reference}'; use one of {', '.join(REFERENCE_MODES)}"
            )
        if self.mode == "image" and options.job.retarget != "none" and not options.reference_pose_path:
            raise AddonError(
                f"retarget is '{options.job.retarget}' with an image reference, which needs the image's skeleton: "
                f"give its OpenPose file (python -m pose_bridge detect makes one), or turn retargeting off"
            )
        # Bad generation settings fail here, before the projection and the render take time.
        self.settings = _job_settings(scene, options, self.resolved, provenance={})
        resolved = self.resolved
        self._projector = projection.make_projector(
            scene, resolved.armature, resolved.camera, resolved.frame_start, resolved.frame_end,
            resolved.width, resolved.height, overrides=options.mapping, preset=options.preset,
            hands=options.job.draw_hands, face=options.job.draw_face, occlusion=options.occlusion, neck=options.neck,
        )
        self._frames = list(range(resolved.frame_start, resolved.frame_end + 1))
        self._poses: list = []
        self._saved_frame: tuple[int, float] | None = None  # set while the scene is moved off its frame
        self._result: projection.ProjectionResult | None = None
        self._reference_rgb: np.ndarray | None = None
        self._reference_pose = None
        self._reference_frame = (
            resolved.frame_start if options.reference_frame is None else int(options.reference_frame)
        )
        self.phase = "project"
        self.paths: JobPaths | None = None

    @property
    def progress(self) -> tuple[int, int]:
        """(frames projected, frames in the range)."""
        return len(self._poses), len(self._frames)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "cancelled", "failed")

    def step(self, budget_s: float = 0.05) -> bool:
        """Do about budget_s seconds of work (at least one frame, or the render, or the write).

        Returns True once the job is written (then paths is set). Raises AddonError when
        the export cannot go on; the scene's frame is restored and nothing is left at job_dir.
        """
        if self.phase == "done":
            return True
        if self.finished:
            raise AddonError(f"this export was {self.phase}; start a new one")
        try:
            if self.phase == "project":
                self._project_some(budget_s)
            elif self.phase == "reference":
                self._make_reference()
            elif self.phase == "write":
                self._write()
        except ReferenceError as exc:
            # Between steps people may delete the armature or camera, or undo (which
            # replaces every object): the export holds objects that are gone.
            self._stop("failed")
            raise AddonError(
                f"an object the job is made from was removed (or undone) while the job was being "
                f"written ({exc}); press Generate again"
            ) from exc
        except BaseException:
            self._stop("failed")
            raise
        return self.phase == "done"

    def cancel(self) -> None:
        """Stop where it is: the scene's frame is restored, nothing is written at job_dir."""
        if not self.finished:
            self._stop("cancelled")

    def run(self) -> JobPaths:
        """All the steps at once (export_job)."""
        while not self.step(budget_s=float("inf")):
            pass
        return self.paths

    # ------------------------------------------------------------ phases

    def _project_some(self, budget_s: float) -> None:
        resolved = self.resolved
        if self._saved_frame is None:
            self._saved_frame = (self.scene.frame_current, self.scene.frame_subframe)
        started = time.monotonic()
        # output_frame sets the render size for the camera frame; it is held only during a
        # step so that between steps the scene's render settings are the user's own.
        with output_frame(self.scene, resolved.width, resolved.height):
            while len(self._poses) < len(self._frames):
                self._poses.append(self._projector.pose_at(self._frames[len(self._poses)]))
                if self.on_progress is not None:
                    self.on_progress(*self.progress)
                if time.monotonic() - started >= budget_s:
                    break
        if len(self._poses) < len(self._frames):
            return
        self._restore_frame()
        self._result = projection.projection_result(self._projector, self._poses)
        if self._result.unmapped:
            log.info("keypoints without a bone (drawn as missing): %s", ", ".join(self._result.unmapped))
        self.phase = "reference"

    def _make_reference(self) -> None:
        resolved, frame = self.resolved, self._reference_frame
        self._reference_rgb = _reference_image(self.scene, self.options, resolved, frame)
        if self.mode == "render":
            if resolved.frame_start <= frame <= resolved.frame_end:
                self._reference_pose = self._result.poses[frame - resolved.frame_start]
            else:
                self._reference_pose = _project(self.scene, self.options, resolved, frame, frame).poses[0]
        self.phase = "write"

    def _write(self) -> None:
        scene, options, resolved, result = self.scene, self.options, self.resolved, self._result
        settings = self.settings
        settings.provenance = {
            "blend_file": bpy.data.filepath,
            "scene": scene.name,
            "armature": resolved.armature.name,
            "camera": resolved.camera.name,
            "addon_version": addon_version(),
            "blender_version": bpy.app.version_string,
            "preset": result.mapping.preset,
            "unmapped": result.unmapped,
            "face_mesh": result.face_mesh,
            "size_note": resolved.size_note,
            "occlusion": bool(options.occlusion),
            "neck": options.neck,
            "reference": (
                {"mode": "render", "frame": self._reference_frame, "engine": options.engine.upper()}
                if self.mode == "render" else {"mode": "image", "path": str(options.image_path)}
            ),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **options.job.provenance,
        }

        job_dir = self.job_dir
        # Checked again: between steps something else may have been put at job_dir.
        _check_replaceable(job_dir)
        # What an export killed half way left: unfinished staging folders, skeletons set aside.
        remove_partial_dirs_of(job_dir)
        remove_partial_files(job_dir)
        tmp_dir = make_partial_dir(job_dir)
        try:
            try:
                paths = write_job(
                    tmp_dir, settings, self._reference_rgb, result.poses, draw_skeletons=options.draw_skeletons
                )
            except PoseBridgeError as exc:
                raise AddonError(f"writing the job failed: {exc}") from exc
            if self._reference_pose is not None:
                openpose_json.write_frame(self._reference_pose, paths.reference_pose)
            elif options.reference_pose_path:
                pose_file = Path(bpy.path.abspath(options.reference_pose_path))
                try:
                    openpose_json.write_frame(openpose_json.read_frame(pose_file), paths.reference_pose)
                except PoseBridgeError as exc:
                    raise AddonError(f"the reference skeleton file {pose_file} cannot be used: {exc}") from exc
            _install(tmp_dir, job_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        log.info("wrote job %s (%d frames, %dx%d)", job_dir, settings.num_frames, settings.width, settings.height)
        self.paths = JobPaths(job_dir)
        self.phase = "done"

    def _stop(self, phase: str) -> None:
        self._restore_frame()
        self.phase = phase

    def _restore_frame(self) -> None:
        if self._saved_frame is None:
            return
        frame, subframe = self._saved_frame
        self._saved_frame = None
        try:
            self.scene.frame_set(frame, subframe=subframe)
        except ReferenceError:
            pass  # the scene itself was removed: there is no frame to put back


def export_job(
    scene: bpy.types.Scene,
    options: ExportOptions,
    job_dir: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
) -> JobPaths:
    """Write the job folder job_dir for scene and options; returns its JobPaths.

    Raises AddonError (no armature, no camera, unmapped body bones, empty frame range,
    bad size, a render that failed...) before anything is written at job_dir.
    progress(done, total) is called after each projected frame. JobExport does the same
    in steps.
    """
    return JobExport(scene, options, job_dir, progress).run()
