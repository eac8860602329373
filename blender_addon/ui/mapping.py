"""The keypoint -> bone table of the panel, and its link to pose_bridge's presets.

The table (scene.animate_anyone.bone_map) is filled from the preset that pose_bridge
detects from the armature's bone names, and the user may edit any row. Operators read
it back as the plain {group: {keypoint: source}} dicts pose_bridge uses.
"""

from __future__ import annotations

from pose_bridge import bone_presets
from pose_bridge.keypoints import BODY_NAMES, HAND_NAMES

GROUPS = ("body", "left_hand", "right_hand")


def keypoint_label(group: str, keypoint: str) -> str:
    """A keypoint as people read it: 'left_hand.index_2' -> 'L Index 2'."""
    words = keypoint.replace("_", " ").title()
    if group == "left_hand":
        return f"L {words}"
    if group == "right_hand":
        return f"R {words}"
    return words


def all_keypoints() -> list[tuple[str, str]]:
    """Every (group, keypoint) of the mapping table, in table order."""
    rows = [("body", name) for name in BODY_NAMES]
    for group in ("left_hand", "right_hand"):
        rows += [(group, name) for name in HAND_NAMES]
    return rows


def _set_item_source(item, source) -> None:
    item.kind, item.bone, item.end, item.offset = "POINT", "", "head", (0.0, 0.0, 0.0)
    item.bone2, item.end2 = "", "head"
    if source is None:
        return
    if isinstance(source, bone_presets.BoneOffset):
        item.kind, item.bone, item.offset = "OFFSET", source.bone, tuple(float(v) for v in source.offset)
    elif isinstance(source, bone_presets.BoneMidpoint):
        item.kind = "MIDPOINT"
        item.bone, item.end = source.first.bone, source.first.end
        item.bone2, item.end2 = source.second.bone, source.second.end
    else:
        item.bone, item.end = source.bone, source.end


def fill_from_preset(settings, armature):
    """Detect the armature's preset and fill the table from it; returns the PresetMatch (or None)."""
    names = [bone.name for bone in armature.data.bones]
    match = bone_presets.match_preset(names) if names else None
    settings.bone_map.clear()
    for group, keypoint in all_keypoints():
        item = settings.bone_map.add()
        item.group, item.keypoint = group, keypoint
        resolved = getattr(match, group, None) or {}
        _set_item_source(item, resolved.get(keypoint))
    settings.bone_map_index = 0
    if match is not None and getattr(match, "score", 1) > 0:
        settings.preset_label = match.preset.label
    else:
        settings.preset_label = "No preset matched: map the bones by hand"
    return match


def item_source(item):
    """The pose_bridge source of one table row, or None when it is not mapped."""
    if not item.bone:
        return None
    if item.kind == "OFFSET":
        return bone_presets.BoneOffset(item.bone, tuple(item.offset))
    if item.kind == "MIDPOINT":
        if not item.bone2:
            return None
        return bone_presets.BoneMidpoint(
            bone_presets.BonePoint(item.bone, item.end), bone_presets.BonePoint(item.bone2, item.end2)
        )
    return bone_presets.BonePoint(item.bone, item.end)


def item_bones(item) -> list[str]:
    return [name for name in (item.bone, item.bone2 if item.kind == "MIDPOINT" else "") if name]


def table_sources(settings) -> dict[str, dict[str, object]]:
    """{"body": {...}, "left_hand": {...}, "right_hand": {...}}: every row, None for the unmapped ones."""
    sources: dict[str, dict[str, object]] = {group: {} for group in GROUPS}
    for item in settings.bone_map:
        sources[item.group][item.keypoint] = item_source(item)
    return sources


def missing_bones(settings, armature) -> list[str]:
    """Rows naming a bone the armature does not have (renamed or deleted bones)."""
    names = {bone.name for bone in armature.data.bones}
    return [
        f"{keypoint_label(item.group, item.keypoint)} -> {bone}"
        for item in settings.bone_map
        for bone in item_bones(item)
        if bone not in names
    ]


def unmapped_keypoints(settings, include_hands: bool) -> list[str]:
    """Labels of the rows with no bone (hands only when hands are drawn)."""
    return [
        keypoint_label(item.group, item.keypoint)
        for item in settings.bone_map
        if not item.bone and (include_hands or item.group == "body")
    ]
