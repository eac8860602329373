"""Training configs: YAML files with the paper's defaults, strict about typos."""


import pytest

from animate_backend.errors import InputError
from animate_backend.train.config import TrainConfig, load_config

from training_clips import CONFIG_DIR


def test_defaults_are_the_papers_settings():
    config = TrainConfig()
    assert config.optim.learning_rate == 1e-5
    assert config.optim.uncond_probability == pytest.approx(0.1)
    assert config.data.clip_frames == 24
    assert config.noise.prediction_type == "v_prediction"
    assert config.noise.rescale_betas_zero_snr


@pytest.mark.parametrize("name", ["train_stage1.yaml", "train_stage2.yaml",
                                  "train_tiny_stage1.yaml", "train_tiny_stage2.yaml"])
def test_shipped_configs_load_and_validate(name, tmp_path):
    config = load_config(CONFIG_DIR / name, {"data.manifest": str(tmp_path / "m.jsonl")})
    config.validate()
    assert config.stage == (2 if "stage2" in name else 1)


def test_unknown_keys_are_errors_not_silent_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rat: 0.1\n")
    with pytest.raises(InputError, match="learning_rat"):
        load_config(path)


def test_overrides_use_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  tiny: true\ndata:\n  manifest: m.json\n")
    config = load_config(path, {"optim.max_train_steps": 3, "data.width": 64})
    assert config.optim.max_train_steps == 3 and config.data.width == 64 and config.model.tiny


@pytest.mark.parametrize("change, message", [
    ({"data.width": 60}, "multiples of 8"),
    ({"optim.mixed_precision": "fp8"}, "mixed_precision"),
    ({"noise.prediction_type": "epsilon"}, "zero terminal SNR"),
    ({"model.tiny": False}, "pretrained_pipeline"),
])
def test_validate_names_the_setting_to_fix(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  tiny: true\ndata:\n  manifest: m.json\n")
    with pytest.raises(InputError, match=message):
        load_config(path, change).validate()


def test_command_line_reports_bad_configs_in_one_line(tmp_path, capsys):
    from animate_backend.train.__main__ import main

    assert main(["stage1", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  manifest: m.json\n")
    assert main(["stage2", "--config", str(path)]) == 2
    assert "model:" in capsys.readouterr().err
