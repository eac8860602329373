"""Our own model parts: the Pose Guider and the reference-attention processors."""

from animate_backend.models.pose_guider import PoseFeatureInjector, PoseGuider
from animate_backend.models.reference_attention import (
    ReferenceBank,
    ReferenceReader,
    ReferenceWriter,
    install_reference_attention,
    remove_reference_attention,
    spatial_self_attention_names,
)

__all__ = [
    "PoseFeatureInjector",
    "PoseGuider",
    "ReferenceBank",
    "ReferenceReader",
    "ReferenceWriter",
    "install_reference_attention",
    "remove_reference_attention",
    "spatial_self_attention_names",
]
