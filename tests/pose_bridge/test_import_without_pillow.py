"""Blender's Python has numpy but no Pillow: everything but detection must work there."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_pose_bridge_works_with_numpy_and_the_standard_library_only(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("PIL", "cv2", "torch", "onnxruntime", "onnx", "av", "tqdm", "matplotlib"):
            sys.modules[name] = None  # any import of these now fails
        import numpy as np
        from pose_bridge import bone_presets, drawing, image_io, job, keypoints, openpose_json, retarget
        from pose_bridge.keypoints import Pose, PoseSequence

        pose = Pose(64, 64)
        pose.body[1] = (32, 20, 1.0)
        pose.body[2] = (20, 20, 1.0)
        image = drawing.draw_pose(pose)
        assert image[20, 26].any()
        seq = retarget.retarget_sequence(PoseSequence([pose, pose]), pose)
        settings = job.JobSettings(width=64, height=64, frame_end=2)
        job.write_job(r"{tmp_path}", settings, np.zeros((64, 64, 3), np.uint8), seq)
        back = job.read_job(r"{tmp_path}")
        assert len(back.poses) == 2 and back.reference.shape == (64, 64, 3)
        assert bone_presets.match_preset(["Hips", "Neck", "Head", "LeftArm", "RightArm"]) is not None
        assert "PIL" not in sys.modules or sys.modules["PIL"] is None
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
