"""The generation settings of one job: JobSettings, the single definition of each setting.

Each user-facing setting is declared once, below, with its default, range, choices, label and
help text (a `Setting` in the field's metadata). Everything else is derived from it:

- job.json (JobSettings.to_dict / from_dict) and its checks (JobSettings.validate);
- the command-line options of both packages (pose_bridge.cli_args.add_setting_arguments);
- the add-on's properties and preferences (blender_addon.ui.properties.setting_property).

So a new setting is one edit here (plus the code that uses it). This module needs nothing but
the standard library: the add-on reads it inside Blender, the backend beside torch.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from pose_bridge.errors import JobError

JOB_FORMAT_VERSION = 1

# Upper bounds of the numeric settings. The model works at about 512x768; 4096 a side is far
# beyond any GPU's memory for it already.
MAX_OUTPUT_SIDE = 4096
MAX_STEPS = 1000  # the noise schedule's own length
MAX_FPS = 1000.0
MAX_SEED = 2**63 - 1  # what a torch generator accepts

OUTPUT_KINDS = ("frames", "video")


@dataclass(frozen=True)
class Setting:
    """How one setting is offered to people: on the command line and in the add-on.

    label: the add-on's name for it ("Guidance").
    help: one sentence, the command line's help and the add-on's tooltip.
    minimum / maximum: the accepted range (inclusive); None is unbounded.
    above: an exclusive lower bound instead (fps: any number above 0).
    soft_maximum: where the add-on's slider stops (typing may go up to maximum).
    choices: (value, label, description) of each allowed value, for text settings.
    option: the command-line option's name without the dashes, when not the field's name
        (a switch `hands` becomes --hands / --no-hands).
    """

    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    soft_maximum: float | None = None
    choices: tuple[tuple[str, str, str], ...] = ()
    option: str = ""

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(value for value, _label, _description in self.choices)


def setting(default: Any, **info: Any) -> Any:
    """A JobSettings field with its Setting."""
    return field(default=default, metadata={"setting": Setting(**info)})


SCHEDULER_CHOICES = (
    ("ddim", "DDIM", "The sampler the Animate Anyone weights were released with"),
    ("dpmsolver++", "DPM-Solver++", "Good results in fewer steps"),
    ("euler", "Euler", "Euler discrete"),
)
CONTEXT_SCHEDULE_CHOICES = (
    ("tapered", "Tapered", "Windows never wrap around; overlaps cross-fade (smoothest joins)"),
    ("loop", "Loop (Moore)", "Moore-AnimateAnyone's released windows: the last wraps onto the first frames; "
     "plain mean. For reproducing published results"),
)
RETARGET_CHOICES = (
    ("none", "Off", "Use the armature's own proportions"),
    ("chain", "Bone Lengths", "Rescale each bone of the driving skeleton to the reference character's length"),
    ("global", "Overall Scale", "Scale and move the whole driving skeleton to the reference character"),
)
DEVICE_CHOICES = (
    ("auto", "Automatic", "CUDA if available, then Apple MPS, else CPU"),
    ("cuda", "CUDA", "An NVIDIA GPU"),
    ("mps", "Apple MPS", "Apple Silicon GPU"),
    ("cpu", "CPU", "Slow: minutes per frame with the full model"),
)
PRECISION_CHOICES = (
    ("auto", "Automatic", "fp16 on GPUs, fp32 on the CPU"),
    ("fp16", "fp16", "Half precision: half the memory"),
    ("bf16", "bf16", "bfloat16: half the memory, for recent GPUs"),
    ("fp32", "fp32", "Full precision: most memory"),
)

SPEED_CHOICES = (
    ("auto", "Automatic", "Channels-last convolutions on the CPU, the plain computation elsewhere"),
    ("plain", "Plain", "The plain computation"),
    ("channels_last", "Channels-Last", "Convolutions in channels-last memory format: about 1.1x faster on the CPU"),
    ("compile", "Compile", "torch.compile of the denoising UNet's transformer blocks: the first job compiles "
     "(about a minute on a small CPU), later ones in the same process run about 1.1-1.25x faster"),
)


@dataclass
class JobSettings:
    """Everything the backend needs to know about one generation, stored as job.json.

    model: a pipeline folder (see animate_backend), or "tiny" for the small untrained
    pipeline used by tests. Frames are numbered from frame_start to frame_end inclusive, as
    in Blender; the output frame files are 0001.png... in that order.
    """

    model: str = setting("tiny", label="Model",
                         help='a pipeline folder, or "tiny" for the untrained test pipeline')
    width: int = setting(512, label="Width", help="output width in pixels, a multiple of 8",
                         minimum=8, maximum=MAX_OUTPUT_SIDE)
    height: int = setting(768, label="Height", help="output height in pixels, a multiple of 8",
                          minimum=8, maximum=MAX_OUTPUT_SIDE)
    fps: float = setting(24.0, label="FPS", help="frame rate of the video", above=0.0, maximum=MAX_FPS)
    frame_start: int = setting(1, label="Start", help="first frame to generate")
    frame_end: int = setting(24, label="End", help="last frame to generate (included)")
    steps: int = setting(20, label="Steps", help="denoising steps (20-30 is usual)",
                         minimum=1, maximum=MAX_STEPS, soft_maximum=100)
    guidance_scale: float = setting(3.5, label="Guidance", option="guidance",
                                    help="classifier-free guidance scale (3.5 is usual; 1 turns it off)",
                                    minimum=0.0, soft_maximum=20.0)
    seed: int = setting(0, label="Seed", help="random seed: the same seed gives the same video",
                        minimum=0, maximum=MAX_SEED)
    context_frames: int = setting(24, label="Window", help="frames denoised together (24 is what the model learned)",
                                  minimum=1, soft_maximum=64)
    context_overlap: int = setting(4, label="Overlap", help="frames shared by neighbouring windows, for smooth joins",
                                   minimum=0, soft_maximum=63)
    context_schedule: str = setting("tapered", label="Windows", help="how long shots are split into windows",
                                    choices=CONTEXT_SCHEDULE_CHOICES)
    scheduler: str = setting("ddim", label="Sampler", help="the noise scheduler that samples the video",
                             choices=SCHEDULER_CHOICES)
    retarget: str = setting("none", label="Retarget",
                            help="fit the driving skeleton to the reference character's proportions",
                            choices=RETARGET_CHOICES)
    draw_hands: bool = setting(True, label="Hands", option="hands", help="draw hand keypoints from the finger bones")
    draw_face: bool = setting(True, label="Face", option="face",
                              help="draw face keypoints (eyes, ears, nose)")
    device: str = setting("auto", label="Device", help="where the model runs", choices=DEVICE_CHOICES)
    precision: str = setting("auto", label="Precision", help="number format of the model's weights and activations",
                             choices=PRECISION_CHOICES)
    # Every choice computes the same video to float32 rounding (docs/performance.md).
    speed: str = setting("auto", label="Speed", help="how the same video is computed faster",
                         choices=SPEED_CHOICES)
    output_kinds: list[str] = field(default_factory=lambda: ["frames", "video"])
    # Where the job came from: blend file, scene, armature, camera, add-on version...
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = JOB_FORMAT_VERSION

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start + 1

    def validate(self) -> None:
        """Raise JobError naming every problem at once, each with what to do."""
        problems = []
        # Ranges and choices, from each setting's declaration.
        for name in SETTINGS:
            problem = check_value(name, getattr(self, name))
            if problem:
                problems.append(problem)
        # What one setting alone cannot say.
        if self.width % 8 or self.height % 8:
            problems.append(
                f"output size {self.width}x{self.height} must be multiples of 8 (the VAE works on 8x8 pixel "
                f"blocks); try {max(8, round(self.width / 8) * 8)}x{max(8, round(self.height / 8) * 8)}"
            )
        if self.frame_end < self.frame_start:
            problems.append(
                f"frame range {self.frame_start}-{self.frame_end} has no frames; set the end frame "
                f"at or after the start frame"
            )
        if not self.context_overlap < max(1, self.context_frames):
            problems.append(
                f"context overlap must be between 0 and the window length minus one "
                f"({self.context_frames - 1}), got {self.context_overlap}"
            )
        unknown = [k for k in self.output_kinds if k not in OUTPUT_KINDS]
        if unknown or not self.output_kinds:
            problems.append(f"output kinds must be a non-empty subset of {OUTPUT_KINDS}, got {self.output_kinds}")
        if not self.model:
            problems.append('model is empty; give a pipeline folder, or "tiny" for the untrained test model')
        if problems:
            raise JobError("invalid job settings:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "job.json") -> JobSettings:
        if not isinstance(data, dict):
            raise JobError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"{source}: unknown settings {unknown}; known ones are {sorted(known)}")
        wrong = _wrong_types(data)
        if wrong:
            raise JobError(f"{source}: settings of the wrong type: " + "; ".join(wrong) + "; export the job again")
        if data.get("format_version", JOB_FORMAT_VERSION) > JOB_FORMAT_VERSION:
            raise JobError(
                f"{source} was written by a newer version (format {data['format_version']}); "
                f"update the backend to read it"
            )
        settings = cls(**data)
        for f in fields(cls):  # JSON has one kind of number: 24.0 is a whole number, 3 a float
            if f.type == "int":
                setattr(settings, f.name, int(getattr(settings, f.name)))
            elif f.type == "float":
                setattr(settings, f.name, float(getattr(settings, f.name)))
        return settings


# Each declared setting's Setting, in declaration order.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(JobSettings) if "setting" in f.metadata}

# What a user sets for each shot: the add-on's Generation panel, and the options every command
# line that generates has.
GENERATION_SETTINGS = ("steps", "guidance_scale", "seed", "context_frames", "context_overlap", "context_schedule",
                       "scheduler", "retarget", "draw_hands", "draw_face")
# Where and how the model runs: the add-on's preferences, an option of the command lines.
RUNTIME_SETTINGS = ("device", "precision", "speed")

# The named choices, for code that checks a value without a whole JobSettings.
SCHEDULERS = SETTINGS["scheduler"].values
CONTEXT_SCHEDULES = SETTINGS["context_schedule"].values
RETARGET_MODES = SETTINGS["retarget"].values
DEVICES = SETTINGS["device"].values
PRECISIONS = SETTINGS["precision"].values
SPEEDS = SETTINGS["speed"].values


def check_value(name: str, value: Any, label: str = "") -> str:
    """What is wrong with `value` for the setting `name` ("" when nothing), by its declaration.

    label names the setting in the message (default: its name in words, "guidance scale";
    a command line passes its option, "--guidance").
    """
    info, words = SETTINGS[name], label or name.replace("_", " ")
    if info.choices:
        return "" if value in info.values else f"{words} must be one of {', '.join(info.values)}, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return f"{words} must be a finite number, got {value}"
        if ((info.minimum is not None and value < info.minimum) or (info.above is not None and value <= info.above)
                or (info.maximum is not None and value > info.maximum)):
            return f"{words} must be {range_text(info, isinstance(default_of(name), int))}, got {value}"
    return ""


def default_of(name: str) -> Any:
    """The default value of a JobSettings field."""
    for f in fields(JobSettings):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    raise KeyError(f"JobSettings has no setting {name!r}")


def range_text(info: Setting, whole: bool = False) -> str:
    """The accepted range in words: 'a whole number from 1 to 1000', 'a number at least 0'."""

    def show(value: float) -> str:
        return str(int(value)) if whole else f"{value:g}"

    kind = "a whole number" if whole else "a number"
    if info.above is not None:
        return f"{kind} above {show(info.above)}" + (f" and at most {show(info.maximum)}" if info.maximum is not None else "")
    if info.minimum is not None and info.maximum is not None:
        return f"{kind} from {show(info.minimum)} to {show(info.maximum)}"
    if info.minimum is not None:
        return f"{kind} of at least {show(info.minimum)}"
    if info.maximum is not None:
        return f"{kind} of at most {show(info.maximum)}"
    return kind


def _wrong_types(data: dict[str, Any]) -> list[str]:
    """What is of the wrong JSON type in a job.json object: a number as text, a list as an id..."""
    types = {f.name: f.type for f in fields(JobSettings)}
    wrong = []

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name, value in data.items():
        kind = types.get(name)
        if kind == "int" and not (is_number(value) and math.isfinite(value) and value == int(value)):
            wrong.append(f"{name} must be a whole number, got {value!r}")
        elif kind == "float" and not is_number(value):
            wrong.append(f"{name} must be a number, got {value!r}")
        elif kind == "str" and not isinstance(value, str):
            wrong.append(f"{name} must be text, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            wrong.append(f"{name} must be true or false, got {value!r}")
        elif kind == "list[str]" and not (isinstance(value, list) and all(isinstance(k, str) for k in value)):
            wrong.append(f"{name} must be a list of names, got {value!r}")
        elif kind == "dict[str, Any]" and not isinstance(value, dict):
            wrong.append(f"{name} must be an object, got {value!r}")
    return wrong
