"""Weights: Moore conversion (strict), make-tiny, save/load, load_pipeline errors, fetch-weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import load_file

from animate_backend import fetch_weights as fetch_module
from animate_backend.__main__ import main
from animate_backend.convert_moore import (
    MOORE_FILES,
    convert_moore,
    moore_motion_key,
    moore_state_dicts,
    ours_to_moore_motion_key,
)
from animate_backend.errors import WeightsError
from animate_backend.loading import load_pipeline
from animate_backend.pipeline import AnimateAnyonePipeline
from animate_backend.tiny import TINY_MARKER

TINY_POSE_GUIDER = (4, 8, 8, 16)


def write_moore_inputs(pipe, root: Path, edit=None) -> dict[str, Path]:
    """Moore's four .pth files (from `pipe`, renamed to Moore's keys) and the base-model folders."""
    moore = root / "moore"
    moore.mkdir()
    state_dicts = moore_state_dicts(pipe)
    if edit is not None:
        edit(state_dicts)
    for name, state in state_dicts.items():
        torch.save(state, moore / name)
    pipe.reference_unet.save_config(root / "unet")
    pipe.vae.save_pretrained(root / "vae")
    pipe.image_encoder.save_pretrained(root / "image_encoder")
    return {"moore_dir": moore, "base_unet_dir": root / "unet", "vae_dir": root / "vae",
            "image_encoder_dir": root / "image_encoder"}


def convert(inputs: dict[str, Path], out: Path, **kwargs) -> Path:
    return convert_moore(**inputs, out_dir=out, dtype=torch.float32, pose_guider_channels=TINY_POSE_GUIDER, **kwargs)


def test_motion_keys_map_as_documented():
    moore = "down_blocks.1.motion_modules.0.temporal_transformer."
    ours = "down_blocks.1.motion_modules.0."
    cases = {
        "norm.weight": "norm.weight",
        "proj_in.bias": "proj_in.bias",
        "proj_out.weight": "proj_out.weight",
        "transformer_blocks.0.attention_blocks.0.to_q.weight": "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.0.attention_blocks.1.to_out.0.bias": "transformer_blocks.0.attn2.to_out.0.bias",
        "transformer_blocks.0.norms.0.weight": "transformer_blocks.0.norm1.weight",
        "transformer_blocks.0.norms.1.bias": "transformer_blocks.0.norm2.bias",
        "transformer_blocks.0.ff_norm.weight": "transformer_blocks.0.norm3.weight",
        "transformer_blocks.0.ff.net.0.proj.weight": "transformer_blocks.0.ff.net.0.proj.weight",
        "transformer_blocks.0.ff.net.2.bias": "transformer_blocks.0.ff.net.2.bias",
    }
    for theirs, mine in cases.items():
        assert moore_motion_key(moore + theirs) == (ours + mine, False)
        assert ours_to_moore_motion_key(ours + mine) == moore + theirs
    assert moore_motion_key("mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0."
                            "attention_blocks.1.pos_encoder.pe") == (
        "mid_block.motion_modules.0.transformer_blocks.0.pos_embed.pe", True)
    with pytest.raises(KeyError):
        moore_motion_key("down_blocks.0.attentions.0.proj_in.weight")


def test_conversion_round_trip_places_every_weight(tiny_pipe, tmp_path):
    out = convert(write_moore_inputs(tiny_pipe, tmp_path), tmp_path / "converted")
    converted = AnimateAnyonePipeline.from_pretrained(out)
    assert not converted.is_untrained and not (out / TINY_MARKER).exists()
    for name in ("denoising_unet", "reference_unet", "pose_guider", "vae", "image_encoder"):
        original = getattr(tiny_pipe, name).state_dict()
        loaded = getattr(converted, name).state_dict()
        assert set(original) == set(loaded), name
        for key in original:
            if name == "reference_unet" and key.startswith(("conv_norm_out.", "conv_out.")):
                continue  # unused by the ReferenceNet, not in Moore's file
            assert torch.equal(original[key], loaded[key]), f"{name}: {key}"
    assert torch.count_nonzero(converted.reference_unet.conv_out.weight) == 0
    scheduler = converted.scheduler.config
    assert (scheduler.prediction_type, scheduler.timestep_spacing, scheduler.rescale_betas_zero_snr) == (
        "v_prediction", "trailing", True)


def test_conversion_keeps_the_checkpoints_fp32_by_default(tiny_pipe, tmp_path):
    inputs = write_moore_inputs(tiny_pipe, tmp_path)
    released = torch.load(inputs["moore_dir"] / MOORE_FILES["motion_module"], weights_only=True)
    out = convert_moore(**inputs, out_dir=tmp_path / "converted", pose_guider_channels=TINY_POSE_GUIDER)
    converted = AnimateAnyonePipeline.from_pretrained(out).denoising_unet.state_dict()
    placed = 0
    for moore_key, value in released.items():
        ours, positional = moore_motion_key(moore_key)
        if positional:
            continue
        assert value.dtype == converted[ours].dtype == torch.float32, moore_key
        assert torch.equal(value, converted[ours]), moore_key  # bit for bit
        placed += 1
    assert placed == len([k for k in converted if ".motion_modules." in k and not k.endswith(".pe")])
    # Asked for, fp16 is still one option away.
    half = convert_moore(**inputs, out_dir=tmp_path / "half", pose_guider_channels=TINY_POSE_GUIDER,
                         dtype=torch.float16)
    on_disk = load_file(half / "denoising_unet" / "diffusion_pytorch_model.safetensors")
    assert {value.dtype for value in on_disk.values()} == {torch.float16}


def test_conversion_lists_every_problem_in_one_error(tiny_pipe, tmp_path):
    missing_key = "down_blocks.0.resnets.0.conv1.weight"
    extra_key = "down_blocks.0.resnets.0.not_a_weight"
    motion_key = "up_blocks.3.motion_modules.2.temporal_transformer.proj_out.bias"

    def corrupt(state_dicts):
        del state_dicts[MOORE_FILES["denoising_unet"]][missing_key]
        state_dicts[MOORE_FILES["reference_unet"]][extra_key] = torch.zeros(1)
        state_dicts[MOORE_FILES["motion_module"]][motion_key] = torch.zeros(7)
        state_dicts[MOORE_FILES["pose_guider"]]["conv_out.weight"] = torch.zeros(32, 16, 1, 1)

    with pytest.raises(WeightsError) as error:
        convert(write_moore_inputs(tiny_pipe, tmp_path, corrupt), tmp_path / "converted")
    message = str(error.value)
    assert f"denoising_unet.pth: missing weights (1): {missing_key}" in message
    assert f"reference_unet.pth: unexpected weights (1): {extra_key}" in message
    assert "motion_module.pth: wrong shapes (1): up_blocks.3.motion_modules.2.proj_out.bias (7,)" in message
    assert "pose_guider.pth: wrong shapes (1): conv_out.weight (32, 16, 1, 1) (expected (32, 16, 3, 3))" in message
    assert not (tmp_path / "converted").exists()  # nothing half-written


def test_positional_tables_are_checked_not_trusted(tiny_pipe, tmp_path):
    key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"

    def longer_table(state_dicts):
        state_dicts[MOORE_FILES["motion_module"]][key] = torch.zeros(1, 40, 32)

    with pytest.raises(WeightsError, match="positional encodings that do not fit.*at most \\(1, 32, 32\\)"):
        convert(write_moore_inputs(tiny_pipe, tmp_path, longer_table), tmp_path / "converted")


def test_conversion_names_missing_input_files(tmp_path):
    (tmp_path / "moore").mkdir()
    torch.save({}, tmp_path / "moore" / "pose_guider.pth")
    with pytest.raises(WeightsError) as error:
        convert_moore(tmp_path / "moore", tmp_path / "unet", tmp_path / "vae", tmp_path / "enc", tmp_path / "out")
    message = str(error.value)
    for name in ("denoising_unet.pth", "reference_unet.pth", "motion_module.pth", "unet/config.json", "vae/config.json"):
        assert name in message
    assert "pose_guider.pth is missing" not in message


def test_convert_moore_command_line(tiny_pipe, tmp_path, monkeypatch):
    inputs = write_moore_inputs(tiny_pipe, tmp_path)
    # The released Pose Guider layout is the command's; the tiny one is passed through the function.
    from animate_backend import convert_moore as convert_module

    real = convert_module.convert_moore
    monkeypatch.setattr(convert_module, "convert_moore",
                        lambda *a, **k: real(*a, **{**k, "pose_guider_channels": TINY_POSE_GUIDER}))
    args = ["convert-moore", "--moore", str(inputs["moore_dir"]), "--base-unet", str(inputs["base_unet_dir"]),
            "--vae", str(inputs["vae_dir"]), "--image-encoder", str(inputs["image_encoder_dir"]),
            "--out", str(tmp_path / "model"), "--dtype", "fp32"]
    assert main(args) == 0
    assert main(args) == 2  # the folder exists now: refused without --force
    assert main(args + ["--force"]) == 0
    loaded = load_pipeline(str(tmp_path / "model"), device="cpu")
    assert loaded.dtype == torch.float32 and not loaded.untrained


def test_make_tiny_save_and_load_round_trip(tiny_pipe, tmp_path, reference_image, skeletons):
    assert main(["make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / TINY_MARKER).is_file()
    loaded = load_pipeline(str(tmp_path / "tiny"), device="cpu", precision="fp32")
    assert loaded.untrained and loaded.pipe.is_untrained and loaded.device == torch.device("cpu")
    for name in ("denoising_unet", "reference_unet", "pose_guider", "vae", "image_encoder"):
        saved, reloaded = getattr(tiny_pipe, name).state_dict(), getattr(loaded.pipe, name).state_dict()
        assert set(saved) == set(reloaded), name
        assert all(torch.equal(saved[key], reloaded[key]) for key in saved), name  # weights: bit for bit
    # Outputs: the same computation, but loaded weights may sit at other memory addresses, and
    # BLAS kernels may then round differently (seen on AMD EPYC, about 1e-6): a float32 tolerance.
    kwargs = dict(height=64, width=64, num_inference_steps=1, output_type="latent")
    a = tiny_pipe(reference_image, skeletons(3), generator=torch.Generator().manual_seed(0), **kwargs).frames
    b = loaded.pipe(reference_image, skeletons(3), generator=torch.Generator().manual_seed(0), **kwargs).frames
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_make_tiny_force_replaces_only_a_pipeline_folder(tmp_path, capsys):
    """--force replaces what make-tiny (or convert-moore) wrote, never a user's folder or file."""
    user = tmp_path / "renders"
    user.mkdir()
    (user / "shot.mp4").write_bytes(b"a user's video")
    assert main(["make-tiny", "--out", str(user)]) == 2
    assert main(["make-tiny", "--out", str(user), "--force"]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err
    assert (user / "shot.mp4").read_bytes() == b"a user's video" and len(list(user.iterdir())) == 1
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["make-tiny", "--out", str(a_file), "--force"]) == 2 and a_file.read_text() == "mine"

    model = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(model)]) == 0
    assert main(["make-tiny", "--out", str(model), "--seed", "1"]) == 2  # exists: refused without --force
    assert main(["make-tiny", "--out", str(model), "--seed", "1", "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "renders", "tiny"], "nothing left over"


def test_pipeline_folders_get_the_permissions_of_ordinary_files(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    finally:
        os.umask(old)
    model = tmp_path / "tiny"
    for path in [model, *model.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path} is {oct(mode)}"


def test_an_interrupted_save_is_cleaned_up_and_an_interrupted_replace_is_undone(tmp_path):
    """What a killed make-tiny leaves: an unfinished folder beside the target, or (killed between
    the two renames of --force) the old pipeline set aside. The next save removes the first and
    puts the second back before deciding anything."""
    from animate_backend.tiny import make_tiny_pipeline, save_pipeline_folder

    model = tmp_path / "tiny"
    leftover = tmp_path / ".tiny.partial-k3j9x2"
    (leftover / "vae").mkdir(parents=True)
    save_pipeline_folder(make_tiny_pipeline(), model)
    assert not leftover.exists() and (model / "model_index.json").is_file()

    os.replace(model, tmp_path / ".tiny.partial-old")  # killed after setting the old one aside
    with pytest.raises(WeightsError, match="already holds a pipeline"):
        save_pipeline_folder(make_tiny_pipeline(), model)
    assert (model / "model_index.json").is_file() and not (tmp_path / ".tiny.partial-old").exists()


def test_a_damaged_weights_file_is_one_clean_sentence(tmp_path):
    assert main(["make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    (tmp_path / "tiny" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError) as error:
        load_pipeline(str(tmp_path / "tiny"), device="cpu")
    message = str(error.value)
    assert ". ." not in message and ".." not in message.replace("...", "")
    assert "diffusion_pytorch_model.safetensors" in message and "make-tiny --out DIR" in message


def test_load_pipeline_tiny_in_memory():
    loaded = load_pipeline("tiny", device="cpu")
    assert loaded.model_id == "tiny" and loaded.untrained and loaded.dtype == torch.float32


def test_load_pipeline_says_what_is_missing(tmp_path):
    with pytest.raises(WeightsError, match="does not exist.*fetch-weights"):
        load_pipeline(str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"), device="cpu")
    assert main(["make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    (tmp_path / "tiny" / "denoising_unet" / "diffusion_pytorch_model.safetensors").unlink()
    for path in (tmp_path / "tiny" / "vae").iterdir():
        path.unlink()
    (tmp_path / "tiny" / "vae").rmdir()
    with pytest.raises(WeightsError) as error:
        load_pipeline(str(tmp_path / "tiny"), device="cpu")
    assert "component folder vae/ is missing" in str(error.value)
    assert "denoising_unet/diffusion_pytorch_model.safetensors is missing" in str(error.value)


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: records requests, serves files from a folder."""

    def __init__(self, root: Path, absent: set[str] = frozenset(), offline_cache: bool = False):
        self.root, self.absent, self.offline_cache = root, absent, offline_cache
        self.requests: list[tuple[str, str, bool]] = []

    def __call__(self, repo_id, filename, *, cache_dir=None, local_files_only=False):
        self.requests.append((repo_id, filename, local_files_only))
        if filename in self.absent:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        if self.offline_cache and local_files_only:
            raise LocalEntryNotFoundError(f"{filename} not cached")
        path = self.root / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"downloaded")
        return str(path)


def test_fetch_weights_downloads_the_public_files_then_converts(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "cache", absent={"image_encoder/model.safetensors"})
    converted = {}
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    monkeypatch.setattr(fetch_module, "is_offline", lambda: False)
    monkeypatch.setattr(fetch_module, "get_session", lambda: FakeSession())
    monkeypatch.setattr(fetch_module, "convert_moore",
                        lambda *folders, **kwargs: converted.update(folders=folders, **kwargs) or kwargs)
    assert main(["fetch-weights", "--out", str(tmp_path / "model")]) == 0
    requested = {(repo, name) for repo, name, _ in hub.requests}
    assert requested == {
        ("patrolli/AnimateAnyone", "denoising_unet.pth"),
        ("patrolli/AnimateAnyone", "reference_unet.pth"),
        ("patrolli/AnimateAnyone", "pose_guider.pth"),
        ("patrolli/AnimateAnyone", "motion_module.pth"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet/config.json"),
        ("stabilityai/sd-vae-ft-mse", "config.json"),
        ("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors"),
        ("lambdalabs/sd-image-variations-diffusers", "image_encoder/config.json"),
        ("lambdalabs/sd-image-variations-diffusers", "image_encoder/model.safetensors"),
        ("lambdalabs/sd-image-variations-diffusers", "image_encoder/pytorch_model.bin"),  # the fallback
    }
    cache = tmp_path / "cache"
    assert converted["folders"] == (
        cache / "patrolli/AnimateAnyone",
        cache / "stable-diffusion-v1-5/stable-diffusion-v1-5/unet",
        cache / "stabilityai/sd-vae-ft-mse",
        cache / "lambdalabs/sd-image-variations-diffusers/image_encoder",
        tmp_path / "model",
    )
    assert converted["dtype"] is None  # the checkpoints' own precision, unless --dtype says otherwise


def test_fetch_weights_offline_lists_what_the_cache_lacks(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "cache", offline_cache=True)
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    monkeypatch.setattr(fetch_module, "is_offline", lambda: True)
    with pytest.raises(WeightsError) as error:
        fetch_module.fetch_weights(tmp_path / "model")
    message = str(error.value)
    assert "offline mode" in message and "unset it" in message and "HF_HUB_OFFLINE is set" in message
    assert "patrolli/AnimateAnyone: motion_module.pth" in message
    assert all(local_only for _, _, local_only in hub.requests)
    assert not (tmp_path / "model").exists()


class FakeSession:
    """Stands in for huggingface_hub's HTTP session: answers, or fails as an unplugged machine does."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.requests = error, []

    def head(self, url, timeout=None):
        self.requests.append((url, timeout))
        if self.error is not None:
            raise self.error
        return object()


def test_fetch_weights_without_a_network_fails_at_once_and_says_so(tmp_path, monkeypatch):
    """No network: one quick check of the Hub, then only the cache; no download is attempted."""
    import time

    session = FakeSession(OSError("[Errno -3] Temporary failure in name resolution"))
    hub = FakeHub(tmp_path / "cache", offline_cache=True)
    monkeypatch.setattr(fetch_module, "get_session", lambda: session)
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    monkeypatch.setattr(fetch_module, "is_offline", lambda: False)
    started = time.monotonic()
    with pytest.raises(WeightsError) as error:
        fetch_module.fetch_weights(tmp_path / "model")
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert len(session.requests) == 1 and session.requests[0][1] <= fetch_module.HUB_CHECK_TIMEOUT_S
    assert all(local_only for _, _, local_only in hub.requests), "no download once the Hub is unreachable"
    assert "could not be reached" in message and "name resolution" in message
    assert "HF_HUB_OFFLINE" not in message, "the user never set it"


def test_fetch_weights_offline_flag_checks_no_network_and_names_the_flag(tmp_path, monkeypatch):
    session = FakeSession()
    hub = FakeHub(tmp_path / "cache", offline_cache=True)
    monkeypatch.setattr(fetch_module, "get_session", lambda: session)
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    monkeypatch.setattr(fetch_module, "is_offline", lambda: False)
    with pytest.raises(WeightsError) as error:
        fetch_module.fetch_weights(tmp_path / "model", offline=True)
    assert session.requests == [], "offline mode makes no network request"
    assert "without --offline" in str(error.value) and "HF_HUB_OFFLINE" not in str(error.value)


def test_fetch_weights_force_never_replaces_a_users_folder_and_checks_before_downloading(tmp_path, monkeypatch):
    session = FakeSession()
    hub = FakeHub(tmp_path / "cache")
    monkeypatch.setattr(fetch_module, "get_session", lambda: session)
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.pdf").write_bytes(b"years of work")
    with pytest.raises(WeightsError, match="not a pipeline folder"):
        fetch_module.fetch_weights(mine, overwrite=True)
    assert hub.requests == [] and session.requests == [], "refused before any download"
    assert [p.name for p in mine.iterdir()] == ["thesis.pdf"]


def test_hf_hub_offline_in_the_environment_is_respected(tmp_path, monkeypatch):
    session = FakeSession()
    hub = FakeHub(tmp_path / "cache", offline_cache=True)
    monkeypatch.setattr(fetch_module, "get_session", lambda: session)
    monkeypatch.setattr(fetch_module, "hf_hub_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        fetch_module.fetch_weights(tmp_path / "model")
    assert session.requests == [] and all(local_only for _, _, local_only in hub.requests)
