"""`make train-demo`: its configs are valid, and a rerun skips every finished step."""

import json

import pytest

from animate_backend.train.config import load_config
from animate_backend.train.demo_recipe import STEPS, Recipe, write_model_card

from training_clips import CONFIG_DIR


@pytest.mark.parametrize("name", ["vae", "stage1", "stage2"])
def test_demo_configs_are_valid(name, tmp_path):
    config = load_config(CONFIG_DIR / f"train_demo_{name}.yaml", {"data.manifest": str(tmp_path / "m.jsonl")})
    config.validate()
    assert config.stage == {"vae": 0, "stage1": 1, "stage2": 2}[name]
    assert config.cpu_threads == 1


def test_a_rerun_continues_with_the_first_unfinished_step(tmp_path, monkeypatch):
    recipe = Recipe(tmp_path, threads=1)
    commands = []
    monkeypatch.setattr(recipe, "run", lambda step, command: commands.append((step, command)))
    for step in ("data", "heldout", "vae"):  # finished before the stop
        recipe.outputs()[step].parent.mkdir(parents=True, exist_ok=True)
        recipe.outputs()[step].write_text("{}")
    recipe.main(stop_after="stage1")
    assert [step for step, _ in commands] == ["stage1"]
    command = commands[0][1]
    assert command[-2:] == ["--resume", "latest"]
    assert f"model.vae={tmp_path / 'vae' / 'vae'}" in command and "cpu_threads=1" in command


def test_model_card_holds_recipe_times_and_scores(tmp_path):
    (tmp_path / "pipeline").mkdir()
    rows = {name: {"iou": 0.5, "iou_reversed": 0.4, "psnr": 20.0, "ssim": 0.7, "temporal_error": 0.01}
            for name in ("model", "vae_ceiling", "reference_copy", "untrained")}
    (tmp_path / "evaluation.json").write_text(json.dumps(
        {"rows": rows, "takes": 8, "frames": 120, "settings": {"steps": 20, "guidance": 3.5}}))
    timings = {step: {"wall_seconds": 60.0, "cpu_seconds": 54.0, "runs": 1} for step in STEPS[:5]}
    card = write_model_card(tmp_path, timings).read_text()
    assert "one character: the demo character" in card
    assert "| reference_copy | 0.500 | 0.400 | 20.000 | 0.700 | 0.010 |" in card
    assert "| stage1 | 1.0 | 0.9 |" in card
