"""Add-on preferences: where the backend lives and how it runs, and "Set up backend".

The backend needs torch, which is gigabytes and does not belong in Blender's Python, so
it gets its own virtual environment. **Set up backend** makes one and pip-installs the
backend into it, in a subprocess, with pip's output streamed into the preferences (and a
text block "Animate Backend Setup" for the whole log). It can be cancelled at any time.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy.types import AddonPreferences, Operator

from ..connection import inprocess
from .properties import setting_property

ADDON_DIR = Path(__file__).resolve().parent.parent
# The add-on's own package: this module is its .ui.preferences.
ADDON_PACKAGE = __package__.rpartition(".")[0]
LOG_TEXT_NAME = "Animate Backend Setup"



def addon_package() -> str:
    """The add-on's module name: "blender_addon" from source, bl_ext.<repo>.animate_anyone installed."""
    return ADDON_PACKAGE


def get_preferences(context=None):
    """The add-on's preferences, or None when it was registered without the add-on system (tests, scripts)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    return addon.preferences if addon is not None else None


def venv_python(venv_dir: str | os.PathLike) -> Path:
    venv_dir = Path(venv_dir)
    if sys.platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def default_venv_dir() -> Path:
    """A folder Blender gives the extension for its own files (kept across add-on updates)."""
    try:
        return Path(bpy.utils.extension_path_user(addon_package(), path="backend_venv", create=False))
    except (ValueError, AttributeError):
        # Not installed as an extension (run from source): Blender's user data folder.
        return Path(bpy.utils.user_resource("DATAFILES", path="animate_anyone")) / "backend_venv"


def default_requirement() -> str:
    """What Set up backend installs: a backend wheel shipped in the add-on, or the source tree it runs from."""
    wheels = sorted((ADDON_DIR / "backend").glob("*.whl"))
    if wheels:
        return f'"{wheels[-1]}[backend]"'
    repo = ADDON_DIR.parent
    if (repo / "pyproject.toml").is_file() and (repo / "animate_backend").is_dir():
        return f'"{repo}[backend]"'
    return "animate-anyone-blender[backend]"


class ANIMATE_AP_preferences(AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend_python: StringProperty(
        name="Backend Python",
        subtype="FILE_PATH",
        description="Python interpreter with animate_backend installed; empty: the one Set up backend made",
    )
    model_dir: StringProperty(
        name="Model Folder",
        subtype="DIR_PATH",
        description='Animate Anyone pipeline folder (python -m animate_backend convert-moore makes one); '
        '"tiny" for the small UNTRAINED test model',
    )
    device: setting_property("device")
    precision: setting_property("precision")
    speed: setting_property("speed")
    venv_dir: StringProperty(
        name="Backend Environment",
        subtype="DIR_PATH",
        description="Folder of the backend's virtual environment; empty: a folder Blender keeps for the add-on",
    )
    setup_base_python: StringProperty(
        name="Base Python",
        subtype="FILE_PATH",
        description="Python 3.11 that creates the environment; empty: Blender's own Python",
    )
    setup_requirement: StringProperty(
        name="Install",
        description="What pip installs into the environment (pip arguments: a path, a wheel or a requirement); "
        "empty: the backend that comes with the add-on",
    )
    run_in_process: BoolProperty(
        name="Run Inside Blender",
        default=False,
        description="Run the model in Blender's own Python (only when torch is installed there); "
        "otherwise in a separate backend process",
    )

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "model_dir")
        if self.model_dir.strip() == "tiny":
            col.label(text="The tiny model is UNTRAINED: it tests the plumbing, it does not make a character",
                      icon="ERROR")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "precision")
        col.prop(self, "speed")

        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        box.prop(self, "backend_python")
        python = resolved_backend_python(self)
        box.label(text=f"Using: {python}" if python else "No backend yet: press Set up Backend")
        if inprocess.available():
            box.prop(self, "run_in_process")

        box = layout.box()
        box.label(text="Set up Backend", icon="PACKAGE")
        box.prop(self, "venv_dir", text="Environment")
        if not self.venv_dir:
            box.label(text=f"Default: {default_venv_dir()}")
        box.prop(self, "setup_base_python")
        box.prop(self, "setup_requirement")
        if not self.setup_requirement:
            box.label(text=f"Default: {default_requirement()}")
        row = box.row()
        if SETUP.running:
            row.operator(ANIMATE_ANYONE_OT_cancel_setup.bl_idname, icon="CANCEL")
        else:
            row.operator(ANIMATE_ANYONE_OT_setup_backend.bl_idname, icon="IMPORT")
        if SETUP.lines:
            log_box = box.box()
            for line in SETUP.lines[-10:]:
                log_box.label(text=line[:160])
        if SETUP.message:
            box.label(text=SETUP.message, icon="ERROR" if SETUP.state == "failed" else "INFO")


def resolved_backend_python(prefs) -> str:
    """The backend Python to start: the preference, else the set-up environment's Python if it exists."""
    if prefs is not None and prefs.backend_python:
        return bpy.path.abspath(prefs.backend_python)
    venv = Path(bpy.path.abspath(prefs.venv_dir)) if prefs is not None and prefs.venv_dir else default_venv_dir()
    python = venv_python(venv)
    return str(python) if python.is_file() else ""


# ---------------------------------------------------------------- Set up backend


class BackendSetup:
    """Creating the environment and installing into it, one subprocess after another.

    start() returns at once; poll() moves the log into `lines` and starts the next step
    when one ends; cancel() terminates the running step. States: idle, running, done,
    failed, cancelled. Used by the modal operator, and directly by tests and scripts.
    """

    def __init__(self) -> None:
        self.state = "idle"
        self.lines: list[str] = []
        self.message = ""
        self.venv_dir: Path | None = None
        self._steps: list[tuple[str, list[str]]] = []
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self, venv_dir: str | os.PathLike, requirement: str, base_python: str | None = None) -> None:
        """Plan the steps and start the first; raises ValueError for a request that cannot work."""
        if self.running:
            raise ValueError("the backend is already being set up; wait or cancel it")
        args = shlex.split(requirement)
        if not args:
            raise ValueError("nothing to install: give pip a path, a wheel or a requirement")
        needs_network = "--no-index" not in args
        if needs_network and not bpy.app.online_access:
            raise ValueError(
                "Setting up the backend downloads packages (torch, diffusers) with pip, and online access is "
                "off: enable 'Allow Online Access' in Preferences > System, then try again"
            )
        base_python = base_python or sys.executable
        self.venv_dir = Path(venv_dir)
        python = str(venv_python(self.venv_dir))
        self._steps = [] if Path(python).is_file() else [
            # Set up again (to update the backend) reuses the environment.
            ("Creating the environment", [base_python, "-m", "venv", str(self.venv_dir)]),
        ]
        self._steps += [
            ("Installing the backend", [python, "-m", "pip", "install", "--disable-pip-version-check", *args]),
            ("Checking the installation", [python, "-c", "import animate_backend, pose_bridge; print('backend ok')"]),
        ]
        self.lines = []
        self.message = ""
        self.state = "running"
        self._next_step()

    def _next_step(self) -> None:
        title, command = self._steps.pop(0)
        self._log(f"== {title}: {' '.join(command)}")
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)  # Blender's paths must not leak into the new environment
        env["PYTHONUNBUFFERED"] = "1"
        try:
            # Run beside the environment, not in Blender's working folder: `python -c` imports from
            # its working folder first, which could hide what was really installed.
            self.venv_dir.parent.mkdir(parents=True, exist_ok=True)
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, encoding="utf-8", errors="replace", env=env, cwd=self.venv_dir.parent,
            )
        except OSError as exc:
            self._finish("failed", f"{title} failed: {exc}")
            return
        self._queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self._process, self._queue), daemon=True)
        self._reader.start()

    @staticmethod
    def _read(process: subprocess.Popen, lines: queue.Queue) -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def poll(self) -> str:
        if not self.running or self._process is None:
            return self.state
        ended = False
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
            else:
                self._log(line)
        if ended:
            code = self._process.wait()
            if code != 0:
                self._finish("failed", f"Setting up the backend failed (exit code {code}); the log above says why")
            elif self._steps:
                self._next_step()
            else:
                self._finish("done", f"Backend ready in {self.venv_dir}")
        return self.state

    def wait(self, timeout: float = 600.0) -> str:
        import time

        deadline = time.monotonic() + timeout
        while self.poll() == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.state

    def cancel(self) -> None:
        if self.running and self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self.running:
            self._steps = []
            self._finish("cancelled", "Setting up the backend was cancelled; press Set up Backend to start again")

    def _finish(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        self._log(message)
        self._process = None

    def _log(self, line: str) -> None:
        self.lines.append(line)
        text = bpy.data.texts.get(LOG_TEXT_NAME) if hasattr(bpy.data, "texts") else None
        if text is None and hasattr(bpy.data, "texts"):
            text = bpy.data.texts.new(LOG_TEXT_NAME)
        if text is not None:
            text.write(line + "\n")


SETUP = BackendSetup()


class ANIMATE_ANYONE_OT_setup_backend(Operator):
    """Create a Python environment for the backend and install it there with pip (downloads several GB)"""

    bl_idname = "animate_anyone.setup_backend"
    bl_label = "Set up Backend"

    _timer = None

    def execute(self, context):
        return self.invoke(context, None)

    def invoke(self, context, event):
        prefs = get_preferences(context)
        venv_dir = bpy.path.abspath(prefs.venv_dir) if prefs and prefs.venv_dir else str(default_venv_dir())
        requirement = (prefs.setup_requirement if prefs else "") or default_requirement()
        base = bpy.path.abspath(prefs.setup_base_python) if prefs and prefs.setup_base_python else None
        text = bpy.data.texts.get(LOG_TEXT_NAME)
        if text is not None:
            text.clear()
        try:
            SETUP.start(venv_dir, requirement, base)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            SETUP.cancel()
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        state = SETUP.poll()
        for area in context.screen.areas if context.screen else ():
            area.tag_redraw()
        if state == "running":
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        if state == "done":
            prefs = get_preferences(context)
            made = str(venv_python(SETUP.venv_dir))
            if prefs is not None and prefs.backend_python and bpy.path.abspath(prefs.backend_python) != made:
                self.report(
                    {"WARNING"},
                    f"{SETUP.message}, but 'Backend Python' still names {prefs.backend_python}: "
                    f"clear it to use the new environment",
                )
            else:
                self.report({"INFO"}, SETUP.message)
            return {"FINISHED"}
        self.report({"ERROR"} if state == "failed" else {"WARNING"}, SETUP.message)
        return {"CANCELLED"}


class ANIMATE_ANYONE_OT_cancel_setup(Operator):
    """Stop setting up the backend"""

    bl_idname = "animate_anyone.cancel_setup"
    bl_label = "Cancel Setup"

    def execute(self, context):
        SETUP.cancel()
        return {"FINISHED"}


CLASSES = (ANIMATE_AP_preferences, ANIMATE_ANYONE_OT_setup_backend, ANIMATE_ANYONE_OT_cancel_setup)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()


def unregister() -> None:
    SETUP.cancel()
    _unregister_classes()
