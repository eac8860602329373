"""The driver: runs a shot list on a Ray cluster, with retries, progress and a clean Ctrl-C.

(About 415 lines: one state machine, read top to bottom.)

Each shot goes pending -> exporting -> queued -> generating -> done, or ends as skipped
(done before), failed (with the reason) or cancelled. Exports are Ray tasks (one CPU each);
generation goes to `Generator` actors, one per GPU (or `actors` CPU-only ones), created when
the first job is ready for them and kept for the whole list so that each loads its model once.

Faults:
- an actor that dies while generating (process killed, node lost) is replaced by a fresh one
  and the job is queued again, up to `retries` times; the job folder keeps the frames (and the
  saved latents) the lost attempt finished, so the retry only makes what is missing;
- an export killed by a signal is tried again the same way; Ray itself retries an export
  whose worker process dies;
- a failure the shot itself causes (a bad rig, no camera, bad settings, missing weights, out
  of memory, a bug) is reported once and never retried: it would fail the same way;
- Ctrl-C cancels: running exports are stopped, running generations stop within one denoising
  window (frames already written are kept for the next run), the actors are ended.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from pose_bridge.errors import PoseBridgeError
from pose_bridge.files import file_sha256
from pose_bridge.job import JobPaths, read_settings

from animate_backend.farm import shots as shot_files
from animate_backend.farm.actors import Slot, check_cpus, cluster_gpus, is_lost_worker, make_generator
from animate_backend.farm.shots import Shot
from animate_backend.farm.state import FarmOptions, ShotState, UpdateCallback

logger = logging.getLogger(__name__)

# Seconds to wait for running generations to stop after a Ctrl-C before ending their actors.
CANCEL_GRACE_S = 30.0


class Farm:
    """One run of a shot list on the Ray cluster that is already initialised."""

    def __init__(
        self, shots: list[Shot], options: FarmOptions, on_update: UpdateCallback | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self.states = [ShotState(shot) for shot in shots]
        self.on_update = on_update or (lambda states: None)
        self.on_message = on_message or logger.info
        self.exports: dict[Any, ShotState] = {}  # export ref -> shot
        self.queue: list[ShotState] = []
        self.slots: list[Slot | None] = []
        self.gpu = False
        self.cancelled = False
        self._prepared = False

    # ------------------------------------------------------------------ the whole run

    def prepare(self) -> bool:
        """Sort out the shots that need no cluster (missing files, done before); True if any is left.

        Needs no Ray: a list whose shots are all done does not start one.
        """
        if not self._prepared:
            for state in self.states:
                self._check(state)
            self._prepared = True
            self._notify()
        return not all(state.finished for state in self.states)

    def run(self) -> list[ShotState]:
        """Run every shot to its end on the Ray cluster this process is connected to."""
        self.prepare()
        self.gpu = cluster_gpus() > 0
        if not self.gpu:
            check_cpus(self.options.cpus_per_actor)
        count = self.options.actors or (cluster_gpus() if self.gpu else 1)
        self.slots = [None] * max(1, count)
        try:
            for state in self.states:
                if state.status == "pending":
                    self._start(state)
            self._notify()
            while not all(state.finished for state in self.states):
                self._assign()
                self._wait()
                self._assign()  # at once, not after the next wait
                self._poll_progress()
                self._notify()
        except KeyboardInterrupt:
            self.cancel()
        finally:
            self._end_actors()
        self._notify()
        return self.states

    def _notify(self) -> None:
        self.on_update(self.states)

    def _say(self, message: str) -> None:
        """A line for the terminal: a shot exported, done, failed, retried."""
        self.on_message(message)

    # ------------------------------------------------------------------ exports

    def _check(self, state: ShotState) -> None:
        """Fail a shot whose file is missing; skip one done before with the same file and options."""
        shot = state.shot
        if not shot.blend.is_file():
            self._fail(state, f"{shot.blend} does not exist; check the shot list ({shot.origin})")
            return
        state.blend_sha256 = file_sha256(shot.blend)
        state.fingerprint = shot_files.options_fingerprint(self.options.model, self.options.shot_options, shot)
        result = shot_files.finished_result(shot.job_dir, state.blend_sha256, state.fingerprint)
        if result is not None:
            state.status, state.result = "skipped", result
            state.frames_total = state.frames_done = int(result["frames"])
            state.detail = f"done before with the same file and options: {_where(shot.job_dir, result)}"

    def _start(self, state: ShotState) -> None:
        """Queue a shot whose export is current (its job folder keeps the frames made); export the others."""
        if shot_files.export_is_current(state.shot.job_dir, state.blend_sha256, state.fingerprint):
            state.frames_total = read_settings(state.shot.job_dir).num_frames
            self._queue(state)
        else:
            self._export(state)

    def _export(self, state: ShotState) -> None:
        from animate_backend.farm.workers import export_shot

        opts = self.options
        model = ["--model", opts.model] if opts.model else []  # else each shot names its own
        cli_args = ["--out", str(state.shot.job_dir), "--export-only", *model,
                    *opts.shot_options, *state.shot.options, "--quiet"]
        state.status, state.export_attempts = "exporting", state.export_attempts + 1
        ref = export_shot.remote(str(state.shot.blend), cli_args, opts.blender, opts.blender_python, opts.addon_cli)
        self.exports[ref] = state

    def _export_finished(self, state: ShotState, outcome: dict[str, Any]) -> None:
        if outcome["ok"]:
            try:
                state.frames_total = shot_files.remember_export(
                    state.shot.job_dir, state.blend_sha256, state.fingerprint
                )
            except PoseBridgeError as exc:
                self._fail(state, f"export wrote an unreadable job folder: {exc}")
                return
            self._say(f"{state.name}: exported ({state.frames_total} frames) on {outcome['host']}")
            self._queue(state)
        elif outcome["lost"] and state.export_attempts <= self.options.retries:
            self._say(f"{state.name}: export killed ({outcome['error']}); trying again")
            self._export(state)
        else:
            self._fail(state, f"export: {outcome['error']}")

    # ------------------------------------------------------------------ generation

    def _queue(self, state: ShotState, front: bool = False) -> None:
        state.status, state.stage, state.worker, state.worker_pid = "queued", "", "", None
        if front:
            self.queue.insert(0, state)
        else:
            self.queue.append(state)

    def _slot(self, index: int) -> Slot:
        """The actor of slot index, started now if it has none (it loads its model on its first job)."""
        slot = self.slots[index]
        if slot is None:
            handle = make_generator(self.gpu, self.options.cpus_per_actor)
            # Asked now, read when it has answered: waiting here would hang on an actor that
            # cannot be placed yet (more actors asked for than the cluster has room for).
            slot = self.slots[index] = Slot(handle, identity_ref=handle.identity.remote())
        return slot

    def _assign(self) -> None:
        """Give queued jobs to idle actors (starting actors as they are first needed)."""
        for index in range(len(self.slots)):
            if not self.queue:
                return
            current = self.slots[index]
            if current is not None and current.state is not None:
                continue
            slot = self._slot(index)
            state = self.queue.pop(0)
            state.status, state.attempts = "generating", state.attempts + 1
            state.frames_done, state.stage = 0, "starting"
            slot.state, slot.started = state, time.monotonic()
            slot.run_ref = slot.handle.run.remote(str(state.shot.job_dir))
            self._read_identity(slot)
            # Shown now, not after the next wait: a short job may be over by then.
            self._notify()

    @staticmethod
    def _read_identity(slot: Slot) -> None:
        """Learn which process the slot's actor is, if it has answered (never waits)."""
        import ray

        if slot.identity is None and slot.identity_ref is not None:
            if ray.wait([slot.identity_ref], timeout=0)[0]:
                try:
                    slot.identity = ray.get(slot.identity_ref)
                except Exception:  # the actor died; its run ref says so
                    slot.identity_ref = None
        Farm._show_worker(slot)

    @staticmethod
    def _show_worker(slot: Slot) -> None:
        if slot.state is None or slot.identity is None:
            return
        identity = slot.identity
        slot.state.worker = f"pid {identity['pid']} on {identity['host']}"
        if identity.get("gpus"):
            slot.state.worker += f" (GPU {','.join(identity['gpus'])})"
        slot.state.worker_pid = int(identity["pid"])

    def _generation_finished(
        self, index: int, slot: Slot, outcome: dict[str, Any] | None, lost: BaseException | None
    ) -> None:
        state = slot.state
        assert state is not None
        slot.state = slot.run_ref = slot.progress_ref = None
        if lost is not None:
            self.slots[index] = None  # the actor is gone: a fresh one is started for the next job
            self._kill(slot)
            if self.cancelled:
                state.status, state.detail = "cancelled", "cancelled while generating"
            elif state.attempts <= self.options.retries:
                self._say(f"{state.name}: the worker generating it was lost ({state.worker}: {_first_line(lost)}); "
                     f"retrying on a fresh one, keeping the frames already made (attempt {state.attempts + 1})")
                self._queue(state, front=True)
            else:
                self._fail(state, f"the worker generating it was lost {state.attempts} times "
                                  f"(last: {state.worker}: {_first_line(lost)})")
            return
        assert outcome is not None
        if outcome["ok"]:
            result = outcome["result"]
            state.status, state.result = "done", result
            state.seconds = time.monotonic() - slot.started
            state.frames_total = state.frames_done = int(result["frames"])
            state.detail = _where(state.shot.job_dir, result)
            try:
                shot_files.remember_result(state.shot.job_dir, result)
            except PoseBridgeError as exc:  # the video is there; only the next run's skip is lost
                logger.warning("%s: could not record the result in job.json (%s)", state.name, exc)
            self._say(f"{state.name}: done in {state.seconds:.1f} s: {state.detail}")
        elif outcome["kind"] == "cancelled":
            state.status, state.detail = "cancelled", "cancelled; the frames made so far are kept"
        else:
            self._fail(state, outcome["message"] if outcome["user_error"] else f"internal error: {outcome['message']}")

    # ------------------------------------------------------------------ waiting

    def _running(self) -> list[tuple[int, Slot]]:
        return [(i, slot) for i, slot in enumerate(self.slots) if slot is not None and slot.run_ref is not None]

    def _wait(self) -> None:
        """Wait up to poll_s for exports or generations to finish, and handle those that did."""
        import ray

        refs = list(self.exports) + [slot.run_ref for _, slot in self._running()]
        if not refs:
            if not all(state.finished for state in self.states) and not self.queue:
                raise RuntimeError("farm bookkeeping: shots are neither running nor queued")
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=self.options.poll_s)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if ref in self.exports:
                state = self.exports.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task failed in Ray itself (all its retries used)
                    self._fail(state, f"export: the worker running it failed ({_first_line(exc)})")
                    continue
                self._export_finished(state, outcome)
                continue
            for index, slot in self._running():
                if slot.run_ref == ref:
                    try:
                        outcome, lost = ray.get(ref), None
                    except Exception as exc:
                        if not is_lost_worker(exc):
                            raise
                        outcome, lost = None, exc
                    self._generation_finished(index, slot, outcome, lost)
                    break

    def _poll_progress(self) -> None:
        """Read each busy actor's progress (without waiting for a slow answer)."""
        import ray

        for _, slot in self._running():
            self._read_identity(slot)
            if slot.progress_ref is not None:
                done, _ = ray.wait([slot.progress_ref], timeout=0)
                if not done:
                    continue
                try:
                    progress = ray.get(slot.progress_ref)
                except Exception:  # the actor died; its run ref says so
                    progress = {}
                slot.progress_ref = None
                state = slot.state
                if state is not None and progress.get("job_dir") == str(state.shot.job_dir):
                    state.stage = progress.get("stage") or state.stage
                    state.frames_done = int(progress.get("frames_done") or 0)
                    if progress.get("frames_total"):
                        state.frames_total = int(progress["frames_total"])
            slot.progress_ref = slot.handle.progress.remote()

    # ------------------------------------------------------------------ endings

    def _fail(self, state: ShotState, reason: str) -> None:
        state.status, state.detail = "failed", _one_line(reason)
        self._say(f"{state.name}: FAILED: {state.detail}")

    def cancel(self) -> None:
        """Stop everything: exports at once, generations within one denoising window."""
        import ray

        self.cancelled = True
        self._say("cancelling: stopping exports and generations (Ctrl-C again to stop at once)")
        for ref, state in list(self.exports.items()):
            ray.cancel(ref)  # raises KeyboardInterrupt in the task, which stops Blender
            state.status, state.detail = "cancelled", "cancelled while exporting"
        self.exports.clear()
        for state in self.queue:
            state.status, state.detail = "cancelled", "cancelled before generating"
        self.queue.clear()
        running = self._running()
        for _, slot in running:
            slot.handle.cancel.remote()
        deadline = time.monotonic() + CANCEL_GRACE_S
        try:
            for index, slot in running:
                ready, _ = ray.wait([slot.run_ref], timeout=max(0.0, deadline - time.monotonic()))
                try:
                    outcome = ray.get(ready[0]) if ready else None
                except Exception as exc:
                    if not is_lost_worker(exc):
                        raise
                    outcome = None
                if outcome is not None and outcome.get("ok"):  # it finished before the cancel arrived
                    self._generation_finished(index, slot, outcome, None)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the actors are ended right away
            pass
        for state in self.states:
            if not state.finished:
                state.status = "cancelled"
                state.detail = state.detail or "cancelled; the frames made so far are kept"

    def _kill(self, slot: Slot) -> None:
        import ray

        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # already gone
            pass

    def _end_actors(self) -> None:
        for index, slot in enumerate(self.slots):
            if slot is not None:
                self._kill(slot)
                self.slots[index] = None


def run_farm(
    shots: list[Shot], options: FarmOptions, on_update: UpdateCallback | None = None,
    on_message: Callable[[str], None] | None = None,
) -> list[ShotState]:
    """Run the shots on Ray and return their final states.

    Joins options.address ("auto" for the cluster of `ray start --head`); with no address and
    no Ray initialised in this process, starts a local one and shuts it down afterwards.
    """
    import ray

    farm = Farm(shots, options, on_update, on_message)
    if not farm.prepare():
        return farm.states
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": options.worker_logs, "include_dashboard": False}
        if options.address:
            kwargs["address"] = options.address
        ray.init(**kwargs)
        started_here = True
    try:
        return farm.run()
    finally:
        if started_here:
            ray.shutdown()


# ----------------------------------------------------------------------------- small helpers


def _where(job_dir: Path, result: dict[str, Any]) -> str:
    video = result.get("video")
    where = str(job_dir / video) if video else str(JobPaths(job_dir).frames)
    return where + (" (UNTRAINED model)" if result.get("untrained") else "")


def _one_line(text: str) -> str:
    lines = [line.strip().removeprefix("- ") for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) if lines else "unknown error"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
