"""Animate Anyone for Blender: a rigged character's motion into video.

The add-on is thin: settings, a panel, operators, armature-to-keypoint
projection, the reference still, the backend client and importing results. The model
runs in a separate backend process (`python -m animate_backend serve`), or inside
Blender when torch is installed there. torch is never imported here.

Installed as an extension this package is imported as bl_ext.<repo>.animate_anyone, so
modules import each other relatively; pose_bridge comes from the bundled wheel.
"""

from __future__ import annotations

import importlib

# Submodules in registration order (properties first: the others refer to them).
_MODULE_NAMES = ("ui.properties", "ui.preferences", "ui.operators", "ui.panel", "commands.blender_command")


def _modules():
    return [importlib.import_module(f".{name}", __name__) for name in _MODULE_NAMES]


def _is_registered() -> bool:
    from .ui.properties import ANIMATE_PG_scene_settings

    return bool(getattr(ANIMATE_PG_scene_settings, "is_registered", False))


def register() -> None:
    """Register every class and hook. Registering again is harmless: it does nothing."""
    if _is_registered():
        return
    done = []
    try:
        for module in _modules():
            module.register()
            done.append(module)
    except Exception:
        # Leave Blender as it was: a half-registered add-on cannot be unregistered cleanly.
        for module in reversed(done):
            module.unregister()
        raise


def unregister() -> None:
    """Undo register(): classes, the status-bar hook, the scene property; stops a running backend process."""
    if not _is_registered():
        return
    for module in reversed(_modules()):
        module.unregister()
