"""Which bone each keypoint is read from on one armature: the keypoint -> bone mapping.

A KeypointMapping starts from the bone-name preset pose_bridge.bone_presets detects (or
one the user names) and takes the user's overrides on top (the panel's Bone Mapping
table, --map on the command line). This module resolves and checks that mapping; it
reads only the armature's bone names, never a frame of the animation, so a bad mapping
fails before any frame is evaluated. Kept apart from the projection, which uses the
mapping but does not care how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bpy

from pose_bridge import bone_presets
from pose_bridge.keypoints import BODY_NAMES, HAND_NAMES

from ..errors import AddonError

HAND_GROUPS = ("left_hand", "right_hand")

# Without these the drawn skeleton is not a body; the head points (nose, eyes, ears)
# may be missing, as they often are in OpenPose detections too.
REQUIRED_BODY = (
    "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
)

# KeypointMapping.preset when the whole mapping was given (preset "none"), as the panel does.
CUSTOM_PRESET = "custom"

NECK_RULES = ("shoulders", "bone")


@dataclass
class KeypointMapping:
    """Where each keypoint comes from on one armature: pose_bridge sources by group.

    body / left_hand / right_hand map BODY_NAMES / HAND_NAMES to a BonePoint, BoneOffset
    or BoneMidpoint naming this armature's bones; keypoints absent from a dict are not mapped.
    """

    preset: str
    body: dict[str, Any] = field(default_factory=dict)
    left_hand: dict[str, Any] = field(default_factory=dict)
    right_hand: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> dict[str, Any]:
        return {"body": self.body, "left_hand": self.left_hand, "right_hand": self.right_hand}[name]

    def unmapped(self, hands: bool = True, neck: str = "shoulders") -> list[str]:
        """Keypoint keys with no source: "nose", ..., "left_hand.index_1", ...

        With neck="shoulders" the neck needs no source of its own (it is made from the shoulders).
        """
        missing = [
            name for name in BODY_NAMES
            if name not in self.body and not (name == "neck" and neck == "shoulders")
        ]
        if hands:
            for group in HAND_GROUPS:
                missing += [f"{group}.{name}" for name in HAND_NAMES if name not in self.group(group)]
        return missing

    def bone_names(self) -> set[str]:
        names: set[str] = set()
        for group in ("body", "left_hand", "right_hand"):
            for source in self.group(group).values():
                names.update(source_bones(source))
        return names


def source_bones(source: Any) -> list[str]:
    """The bone names a pose_bridge source reads (two for a BoneMidpoint)."""
    if isinstance(source, tuple):
        return [name for alternative in source for name in source_bones(alternative)]
    if isinstance(source, bone_presets.BoneMidpoint):
        return [source.first.bone, source.second.bone]
    return [source.bone]


def _source_from_override(value: Any, key: str, bone_names: set[str], armature_name: str) -> Any:
    """One override value as a pose_bridge source; None means "not mapped"."""
    if value is None or value == "":
        return None
    if isinstance(value, (bone_presets.BonePoint, bone_presets.BoneOffset, bone_presets.BoneMidpoint)):
        source = value
    elif isinstance(value, str):
        source = bone_presets.BonePoint(value, "head")
    elif isinstance(value, (tuple, list)) and len(value) == 2 and value[1] in ("head", "tail"):
        source = bone_presets.BonePoint(str(value[0]), str(value[1]))
    else:
        raise AddonError(
            f"mapping for '{key}' must be a bone name, (bone, 'head'|'tail'), a BonePoint/BoneOffset "
            f"or None, got {value!r}"
        )
    names = source_bones(source)
    if not all(names):
        return None
    for name in names:
        if name not in bone_names:
            raise AddonError(
                f"the mapping gives bone '{name}' for keypoint '{key}', but armature "
                f"'{armature_name}' has no such bone; pick one of its bones or clear the row"
            )
    return source


def _flatten_overrides(overrides: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """{(group, keypoint): value} from a flat {"left_wrist"|"left_hand.wrist": v} or nested {group: {kp: v}}."""
    flat: dict[tuple[str, str], Any] = {}
    for key, value in overrides.items():
        if key in ("body", *HAND_GROUPS) and isinstance(value, dict):
            for keypoint, source in value.items():
                flat[(key, keypoint)] = source
        elif "." in key:
            group, keypoint = key.split(".", 1)
            flat[(group, keypoint)] = value
        else:
            flat[("body", key)] = value
    for group, keypoint in flat:
        names = BODY_NAMES if group == "body" else HAND_NAMES if group in HAND_GROUPS else ()
        if keypoint not in names:
            raise AddonError(
                f"unknown keypoint '{keypoint}' in the bone mapping (group '{group}'); body keypoints are "
                f"{', '.join(BODY_NAMES)}; hand keypoints are left_hand.<name> / right_hand.<name> with "
                f"<name> one of {', '.join(HAND_NAMES)}"
            )
    return flat


def resolve_mapping(
    armature: bpy.types.Object,
    overrides: dict[str, Any] | None = None,
    preset: str = "auto",
) -> KeypointMapping:
    """The keypoint sources of an armature: the detected preset, then the overrides on top.

    overrides: {keypoint key: value} with keys a body name ("left_wrist") or
    "<left_hand|right_hand>.<hand name>" ("right_hand.index_2"), or nested {"body": {...}, "left_hand": {...}, "right_hand": {...}}
    (the panel's table); a value is a bone name (its head), (bone, "head"|"tail"), a
    pose_bridge BonePoint / BoneOffset, or None / "" to leave the keypoint unmapped.
    preset: "auto" to detect from bone names, "none" to start from an empty mapping (the
    result's preset is then "custom": all of it comes from the overrides), or
    a name from pose_bridge.bone_presets.PRESETS to use that preset.
    Keypoints the preset cannot resolve on this rig stay unmapped (KeypointMapping.unmapped).
    """
    bone_names = [bone.name for bone in armature.data.bones]
    if not bone_names:
        raise AddonError(f"armature '{armature.name}' has no bones; pick the character's rig")
    mapping = KeypointMapping(preset=CUSTOM_PRESET if preset == "none" else "")
    if preset != "none":
        if preset == "auto":
            match = bone_presets.match_preset(bone_names)
        elif preset in bone_presets.PRESETS:
            match = bone_presets.resolve_preset(bone_presets.PRESETS[preset], bone_names)
        else:
            raise AddonError(
                f"unknown bone preset '{preset}'; use auto, none, or one of {', '.join(bone_presets.PRESETS)}"
            )
        if match is not None and match.score > 0:
            mapping = KeypointMapping(
                preset=match.preset.name,
                body=dict(match.body),
                left_hand=dict(match.left_hand),
                right_hand=dict(match.right_hand),
            )
    if overrides:
        names = set(bone_names)
        for (group, keypoint), value in _flatten_overrides(overrides).items():
            source = _source_from_override(value, f"{group}.{keypoint}".removeprefix("body."), names, armature.name)
            if source is None:
                mapping.group(group).pop(keypoint, None)
            else:
                mapping.group(group)[keypoint] = source
    return mapping


def check_neck_rule(neck: str) -> None:
    if neck not in NECK_RULES:
        raise AddonError(
            f"unknown neck rule '{neck}'; use 'shoulders' (the mean of the shoulders, as DWPose draws it) "
            f"or 'bone' (the rig's own neck bone)"
        )


def check_required(mapping: KeypointMapping, armature: bpy.types.Object, neck: str = "shoulders") -> None:
    """Raise AddonError naming the body keypoints a skeleton cannot do without, when unmapped."""
    missing = [name for name in mapping.unmapped(hands=False, neck=neck) if name in REQUIRED_BODY]
    if not missing:
        return
    if not mapping.preset:
        where = f"armature '{armature.name}' matches no bone-name preset, so these body keypoints have no bone"
    elif mapping.preset == CUSTOM_PRESET:
        where = f"armature '{armature.name}': with the bone mapping given, these body keypoints have no bone"
    else:
        where = f"armature '{armature.name}' (preset {mapping.preset}): these body keypoints have no bone"
    raise AddonError(
        f"{where}: {', '.join(missing)}; map them to bones in the Bone Mapping table (or with "
        f"--map KEYPOINT=BONE on the command line)"
    )
