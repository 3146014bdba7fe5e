"""Every recipe builds a valid config, full-size and smoke."""

from pathlib import Path

import pytest

from malign.training.commands import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.py"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
@pytest.mark.parametrize("smoke", [False, True])
def test_recipe_builds(path, smoke):
    config = load_recipe(path, smoke=smoke)
    config.validate()
    assert config.name
    assert config.training.steps % config.training.steps_per_checkpoint == 0


def test_there_are_recipes():
    assert any(p.stem == "demo" for p in RECIPES)
