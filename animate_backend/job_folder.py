"""A job folder's out/ as the job runner keeps it: one run at a time, nothing in the way,
finished frames told from stale ones, and the video kept up to date with the frames.

File names come from pose_bridge.job.JobPaths; nothing here removes a file the job did not make.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from animate_backend.events import ProgressTracker
from animate_backend.job_log import JobLog
from pose_bridge.errors import JobError
from pose_bridge.job import JobPaths, JobSettings


@contextmanager
def job_lock(paths: JobPaths) -> Iterator[None]:
    """Hold an exclusive lock on the job's out/ folder (a flock on the folder itself: no lock file).

    The lock goes with the process, however it ends; a second process raises JobError at once.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; jobs there are not protected against a second run
        yield
        return
    check_output_layout(paths)
    paths.out.mkdir(exist_ok=True)
    fd = os.open(paths.out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(
                f"the job {paths.root} is being run by another process right now; wait for it to finish "
                f"(or cancel it), then run again"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def check_output_layout(paths: JobPaths, num_frames: int = 0) -> None:
    """Raise JobError when something is in the way of an output: a file where out/ or
    out/frames/ goes, a folder where a file goes. Nothing there is moved or removed: it may be
    a user's."""
    folders = (paths.out, paths.frames)
    files = (paths.video, paths.log, paths.result, paths.latents, *(paths.frame(i) for i in range(num_frames)))
    blocked = [p for p in folders if p.exists() and not p.is_dir()] + [p for p in files if p.is_dir()]
    if blocked:
        raise JobError(
            f"{blocked[0]} is in the way: the job writes a {'folder' if blocked[0] in folders else 'file'} "
            f"there; move it elsewhere and run the job again"
        )


def count_finished_frames(job_dir: str | os.PathLike) -> int:
    """How many output frame files a job folder holds (for the `cancelled` event)."""
    return len(JobPaths(Path(job_dir)).frame_files())


def is_png_file(path: Path) -> bool:
    """Whether a frame file is there and is a PNG (a damaged or foreign file is made again)."""
    from pose_bridge.image_io import PNG_SIGNATURE

    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def read_result(paths: JobPaths) -> dict[str, Any] | None:
    """out/result.json of the last finished run, None when missing or unreadable."""
    try:
        data = json.loads(paths.result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outputs_fingerprint(paths: JobPaths, log: JobLog) -> str | None:
    """The fingerprint of the run that made the outputs now in out/ (None if not known).

    A run writes an "outputs" log record just before it starts making outputs, so that a run
    that failed earlier (say, on missing weights) never makes an older run's frames look stale.
    """
    record = log.latest("outputs")
    if record is not None:
        return record.get("fingerprint")
    result = read_result(paths)
    return result.get("fingerprint") if result else None


def remove_stale_outputs(paths: JobPaths, log: JobLog) -> None:
    """Remove the outputs an earlier run made with other settings or inputs (only the job's own files)."""
    stale = paths.frame_files() + [p for p in (paths.video, paths.result, paths.latents) if p.exists()]
    if stale:
        log.message(f"the files in out/ were made with other settings or inputs: removing {len(stale)} stale files")
    for path in stale:
        path.unlink(missing_ok=True)


def write_video_if_needed(
    paths: JobPaths, settings: JobSettings, num_frames: int, tracker: ProgressTracker, log: JobLog
) -> Path:
    """Encode out/video.mp4 from the frame files unless an up-to-date one exists."""
    from pose_bridge.image_io import read_image, write_video

    previous = read_result(paths)
    video_current = (
        paths.video.is_file()
        and previous is not None
        and previous.get("video") is not None
        and previous.get("fps") == settings.fps
        and previous.get("frames") == num_frames
        and all(paths.frame(i).stat().st_mtime <= paths.video.stat().st_mtime for i in range(num_frames))
    )
    if video_current:
        return paths.video
    tracker.stage("encoding", f"writing {paths.video.name} at {settings.fps:g} fps", frames_done=num_frames)
    write_video(paths.video, (read_image(paths.frame(i)) for i in range(num_frames)), settings.fps)
    log.write({"type": "video", "path": paths.video.relative_to(paths.root).as_posix(), "fps": settings.fps})
    return paths.video
