"""Each stage's models come from the right weights: SD folders, pipeline folders, motion adapters."""

import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from animate_backend.configs import load_size_config
from animate_backend.errors import InputError
from animate_backend.models.reference_attention import remove_reference_attention
from animate_backend.tiny import make_tiny_pipeline, save_pipeline_folder
from animate_backend.train.config import TrainConfig
from animate_backend.train.models import is_motion_key, unet2d_from_motion_unet
from animate_backend.train.loop import make_optimizer
from animate_backend.train.models import build_stage_models


def test_the_2d_unet_taken_from_a_motion_unet_has_its_weights_and_output():
    pipe = make_tiny_pipeline()
    remove_reference_attention(pipe.reference_unet, pipe.denoising_unet)  # plain UNets to compare
    pipe.pose_injector.remove()
    motion_unet = pipe.denoising_unet
    unet = unet2d_from_motion_unet(motion_unet)
    state = unet.state_dict()
    motion_state = motion_unet.state_dict()
    assert state.keys() == {k for k in motion_state if not is_motion_key(k)}
    for key, value in state.items():
        assert torch.equal(value, motion_state[key])
    # With the motion modules' output zeroed, one frame through either UNet is the same.
    for name, module in motion_unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 32)
    with torch.no_grad():
        expected = motion_unet(x[:, :, None], 10, encoder_hidden_states=context).sample[:, :, 0]
        torch.testing.assert_close(unet(x, 10, encoder_hidden_states=context).sample, expected, rtol=1e-4, atol=1e-5)


def test_stage1_from_stable_diffusion_folders(tmp_path):
    sizes = load_size_config("tiny")
    sd_unet = UNet2DConditionModel(**sizes["unet"])
    sd_unet.save_pretrained(tmp_path / "sd" / "unet")
    AutoencoderKL(**sizes["vae"]).save_pretrained(tmp_path / "sd" / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes["image_encoder"])).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(**sizes["feature_extractor"]).save_pretrained(tmp_path / "clip")

    config = TrainConfig(stage=1)
    config.model.sd_model, config.model.image_encoder = str(tmp_path / "sd"), str(tmp_path / "clip")
    models = build_stage_models(config)
    for unet in (models.reference_unet, models.denoising_unet):
        assert isinstance(unet, UNet2DConditionModel)
        for key, value in sd_unet.state_dict().items():
            assert torch.equal(unet.state_dict()[key], value)
    assert models.reference_unet is not models.denoising_unet
    guider = models.pose_guider
    assert not guider.conv_out.weight.any() and not guider.conv_out.bias.any()
    assert 0.01 < float(guider.conv_in.weight.detach().std()) < 0.03  # Gaussian, std 0.02
    assert models.feature_extractor.crop_size["height"] == 32

    config.model.image_encoder = str(tmp_path / "nowhere")
    with pytest.raises(Exception, match="nowhere"):
        build_stage_models(config)


def test_stage2_takes_its_motion_modules_from_an_adapter_folder(tmp_path):
    pipe = make_tiny_pipeline(seed=1)
    save_pipeline_folder(pipe, tmp_path / "pipe")
    sizes = load_size_config("tiny")
    adapter = MotionAdapter(block_out_channels=tuple(sizes["unet"]["block_out_channels"]),
                            motion_layers_per_block=2, **sizes["motion"])
    adapter.save_pretrained(tmp_path / "adapter")

    config = TrainConfig(stage=2)
    config.model.pretrained_pipeline = str(tmp_path / "pipe")
    config.model.motion_adapter = str(tmp_path / "adapter")
    unet = build_stage_models(config).denoising_unet
    adapter_state = adapter.state_dict()
    pipe_state = pipe.denoising_unet.state_dict()
    for key, value in unet.state_dict().items():
        if is_motion_key(key):
            assert torch.equal(value, adapter_state[key]), key
        else:
            assert torch.equal(value, pipe_state[key]), key


def test_8bit_adam_without_bitsandbytes_says_how_to_get_it():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        config = TrainConfig()
        config.optim.use_8bit_adam = True
        with pytest.raises(InputError, match="pip install bitsandbytes"):
            make_optimizer([torch.nn.Parameter(torch.zeros(1))], config, 1e-5)
    else:
        pytest.skip("bitsandbytes is installed here")
