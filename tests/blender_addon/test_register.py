"""Registering the add-on: clean, repeatable, and everything it adds is there (and gone after)."""

from __future__ import annotations

import stat
import sys
from types import SimpleNamespace

import bpy
import addon_utils  # noqa: E402  (importable only once bpy is)
import pytest

import blender_addon
import ui_scene
from blender_addon.connection import client as backend_client
from blender_addon.ui import panel, preferences
from blender_addon.ui.operators import CLASSES as OPERATOR_CLASSES
from blender_addon.ui.panel import CLASSES as PANEL_CLASSES
from blender_addon.ui.properties import effective_camera, effective_frame_range, effective_size

OPERATORS = ("preview_skeleton", "export_job", "generate", "cancel_generate", "import_result",
             "refresh_mapping", "stop_backend", "setup_backend", "cancel_setup")


def _status_hooks() -> int:
    return sum(1 for f in bpy.types.STATUSBAR_HT_header._dyn_ui_initialize() if f is panel.draw_status)


def _is_registered() -> bool:
    return hasattr(bpy.types.Scene, "animate_anyone")


@pytest.fixture(autouse=True)
def clean():
    bpy.ops.wm.read_factory_settings(use_empty=True)  # also disables the add-on if a test enabled it
    blender_addon.unregister()
    yield
    blender_addon.unregister()


def test_register_unregister_twice_in_a_row():
    for _ in range(2):
        blender_addon.register()
        blender_addon.register()  # a second register is harmless
        assert _is_registered()
        for cls in OPERATOR_CLASSES + PANEL_CLASSES:
            assert cls.is_registered, cls.__name__
        for name in OPERATORS:
            assert getattr(bpy.ops.animate_anyone, name).get_rna_type().identifier.startswith("ANIMATE_ANYONE_OT_")
        assert bpy.types.ANIMATE_PT_main.bl_category == "Animate"
        assert _status_hooks() == 1

        blender_addon.unregister()
        blender_addon.unregister()
        assert not _is_registered()
        for cls in OPERATOR_CLASSES + PANEL_CLASSES:
            assert not cls.is_registered, cls.__name__
        assert _status_hooks() == 0


def test_scene_settings_default_to_the_scenes_own():
    blender_addon.register()
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 10, 40
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1003, 563, 50
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    settings = scene.animate_anyone

    assert effective_camera(scene, settings) == camera
    assert effective_frame_range(scene, settings) == (10, 40)
    width, height, note = effective_size(scene, settings)
    assert (width, height) == (504, 280) and "501x281 rounded to 504x280" in note
    settings.use_render_size = False
    settings.width, settings.height = 256, 384
    assert effective_size(scene, settings) == (256, 384, "")
    settings.use_scene_range = False
    settings.frame_start, settings.frame_end = 3, 7
    assert effective_frame_range(scene, settings) == (3, 7)
    assert settings.import_mode == "PLANE" and settings.output_dir == "//animate_anyone/"


def test_camera_and_armature_pointers_take_only_their_kind():
    blender_addon.register()
    prop = bpy.types.Scene.bl_rna.properties["animate_anyone"].fixed_type.properties
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    empty = bpy.data.objects.new("Empty", None)
    settings = bpy.context.scene.animate_anyone
    assert prop["armature"].fixed_type.identifier == "Object"
    # The poll functions are what the panel's pickers use.
    from blender_addon.ui.properties import _poll_armature, _poll_camera

    assert _poll_camera(settings, camera) and not _poll_camera(settings, empty)
    assert not _poll_armature(settings, camera)


def test_add_on_system_gives_preferences():
    addon_utils.enable(ui_scene.ADDON, default_set=True)
    prefs = preferences.get_preferences()
    assert prefs is not None and prefs.bl_rna.identifier == "ANIMATE_AP_preferences"
    assert (prefs.device, prefs.precision, prefs.model_dir, prefs.run_in_process) == ("auto", "auto", "", False)
    addon_utils.disable(ui_scene.ADDON, default_set=True)
    assert preferences.get_preferences() is None and not _is_registered()


def test_unregister_stops_a_running_backend(tmp_path):
    blender_addon.register()
    # A stand-in backend that waits for input forever: unregister must not leave it running.
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\nimport sys\nfor line in sys.stdin:\n    if 'shutdown' in line:\n        break\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    client = backend_client.shared_client(str(script))
    client.start()
    process = client.process
    assert process.poll() is None
    blender_addon.unregister()
    assert process.poll() is not None
    assert not backend_client.shared_is_running()


# ---------------------------------------------------------------- the panel draws


ICONS = {item.identifier for item in bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items}


def _check_icon(kwargs):
    assert kwargs.get("icon", "NONE") in ICONS, f"no icon {kwargs['icon']}"


class RecordingLayout:
    """Stands in for bpy.types.UILayout: checks every property, operator and icon the draw code names."""

    def __init__(self, calls):
        self.calls = calls
        self.use_property_split = self.use_property_decorate = False
        self.scale_y = 1.0
        self.enabled = self.active = True

    def _child(self, *args, **kwargs):
        return RecordingLayout(self.calls)

    row = column = box = split = column_flow = grid_flow = _child

    def prop(self, data, name, **kwargs):
        _check_icon(kwargs)
        assert name in data.bl_rna.properties, f"{data} has no property {name}"
        self.calls.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **kwargs):
        assert name in data.bl_rna.properties, f"{data} has no property {name}"
        assert search_name in search_data.bl_rna.properties
        self.calls.append(("prop_search", name))

    def operator(self, idname, **kwargs):
        _check_icon(kwargs)
        module, name = idname.split(".")
        getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises for an unknown operator
        self.calls.append(("operator", idname))

    def label(self, text="", **kwargs):
        _check_icon(kwargs)
        assert isinstance(text, str)
        self.calls.append(("label", text))

    def template_list(self, list_type, list_id, data, propname, active_data, active_propname, **kwargs):
        assert getattr(bpy.types, list_type).is_registered
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties
        self.calls.append(("template_list", propname))

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.calls.append(("progress", text))

    def separator(self, **kwargs):
        pass


def _draw(panel_cls, context):
    calls = []
    panel_cls.draw(SimpleNamespace(layout=RecordingLayout(calls)), context)  # draw() only uses self.layout
    return calls


def test_every_panel_draws_with_real_properties_and_operators(tmp_path):
    scene = ui_scene.build_scene(tmp_path)
    ui_scene.enable_addon()
    ui_scene.configure(scene, tmp_path)
    scene.animate_anyone.bone_map_index = 1
    context = bpy.context
    drawn = {cls.__name__: _draw(cls, context) for cls in PANEL_CLASSES if issubclass(cls, bpy.types.Panel)}
    main = drawn["ANIMATE_PT_main"]
    assert ("operator", "animate_anyone.generate") in main and ("prop", "armature") in main
    assert ("label", "64 x 64 px") in main
    assert ("template_list", "bone_map") in drawn["ANIMATE_PT_mapping"]
    # Each row of the mapping table: keypoint, a bone picker searching the armature's bones, the end.
    settings = scene.animate_anyone
    row_calls = []
    bpy.types.ANIMATE_UL_bone_map.draw_item(
        None, context, RecordingLayout(row_calls), settings, settings.bone_map[1], 0, settings, "bone_map_index", 1, 0
    )
    assert row_calls == [("label", "Neck"), ("prop_search", "bone"), ("prop", "end")]
    flags, order = bpy.types.ANIMATE_UL_bone_map.filter_items(
        SimpleNamespace(bitflag_filter_item=1 << 30), context, settings, "bone_map"
    )
    assert sum(1 for f in flags if f) == 18 and order == []  # body rows only until hands are asked for
    # The test rig has no fingers: unmapped hand points are listed when hands are drawn.
    scene.animate_anyone.draw_hands = True
    mapping_calls = _draw(bpy.types.ANIMATE_PT_mapping, context)
    assert any(kind == "label" and text.startswith("Not mapped (") for kind, text in mapping_calls)

    prefs = preferences.get_preferences()
    calls = []
    # AddonPreferences.draw reads its own properties: draw with the real preferences as self.
    prefs.__class__.draw(_PrefsProxy(prefs, RecordingLayout(calls)), context)
    assert ("operator", "animate_anyone.setup_backend") in calls and ("prop", "backend_python") in calls


class _PrefsProxy:
    def __init__(self, prefs, layout):
        self._prefs, self.layout = prefs, layout

    def __getattr__(self, name):
        return getattr(self._prefs, name)

    @property
    def bl_rna(self):
        return self._prefs.bl_rna


def test_progress_shows_in_panel_and_status_bar(tmp_path):
    from blender_addon.connection import generation

    scene = ui_scene.build_scene(tmp_path)
    ui_scene.enable_addon()
    controller = generation.GenerateController(scene, None, tmp_path / "job", runner=None)
    controller.state = "running"
    controller._on_event({"type": "progress", "stage": "denoising", "step": 3, "steps": 10, "window": 2,
                          "windows": 4, "frames_done": 0, "frames_total": 40, "eta_s": 75.0, "message": ""})
    generation.ACTIVE = controller
    try:
        calls = _draw(bpy.types.ANIMATE_PT_main, bpy.context)
        assert ("label", "Denoising step 3/10, window 2/4") in calls
        assert ("progress", "frames 0/40, about 1 min 15 s left") in calls
        assert ("operator", "animate_anyone.cancel_generate") in calls
        assert ("operator", "animate_anyone.generate") not in calls
        status = []
        panel.draw_status(SimpleNamespace(layout=RecordingLayout(status)), bpy.context)
        assert status == [("progress", "Animate: Denoising step 3/10, window 2/4")]
        # 2 of 4 windows of step 3 of 10: (2 * 4 + 2) / 40 of the denoising share (90%).
        assert controller.progress.factor() == pytest.approx(0.9 * 10 / 40)
    finally:
        generation.ACTIVE = None
