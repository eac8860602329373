"""pose_bridge: poses as data, for the Blender add-on and the Animate Anyone backend.

Modules (each importable with numpy and the standard library alone, except detect):

- keypoints: Pose and PoseSequence (OpenPose layout: 18 body, 2 x 21 hand, 68 face points)
- openpose_json: OpenPose JSON frame files, folders of them, and sequence files (poses.json)
- drawing: DWPose-style skeleton images (numpy only, runs inside Blender)
- image_io: PNG (stdlib), other images (Pillow), mp4 video (PyAV)
- retarget: driving skeleton -> reference proportions (chain or global)
- bone_presets: which rig bone gives each keypoint, per rig family
- detect: DWPose ONNX detection from images and videos (needs onnxruntime)
- job: the job folder shared by the add-on and the backend

Command line: python -m pose_bridge {draw,retarget,detect} --help
"""

__version__ = "0.1.0"
