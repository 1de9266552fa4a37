"""The `checks:` and `health:` config: the documented defaults are the real ones."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import ValidationError

from agent.checks import ChecksConfig, HealthConfig, checks_settings, health_settings
from tests.conftest import ROOT, make_config

EXAMPLE = ROOT / "config" / "example.yaml"


def test_the_example_config_documents_exactly_the_defaults() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert ChecksConfig.model_validate(data["checks"]) == ChecksConfig()
    assert HealthConfig.model_validate(data["health"]) == HealthConfig()


def test_the_commented_data_example_is_valid() -> None:
    text = EXAMPLE.read_text()
    block = re.search(r"  # data:\n((?:  #.*\n)+)", text)
    assert block is not None
    lines = [line.replace("  # ", "  ", 1) for line in block.group(0).splitlines()]
    data = yaml.safe_load("\n".join(lines))
    settings = ChecksConfig.model_validate(data)
    assert settings.data["dam-plc.water_level"].kinds == ["range", "stuck", "spike", "gap"]
    assert settings.data["rain-gauge.rain_total"].kinds == ["counter"]


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError, match="must not be above fail"):
        ChecksConfig.model_validate({"system": {"load_per_cpu": {"warn": 5, "fail": 2}}})
    with pytest.raises(ValidationError, match="must not be below fail"):
        ChecksConfig.model_validate({"system": {"disk": {"warn_free_percent": 2}}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ChecksConfig.model_validate({"system": {"dsik": {}}})
    with pytest.raises(ValidationError, match="expected a duration"):
        HealthConfig.model_validate({"interval": "soon"})
    assert HealthConfig.model_validate({"interval": "10m"}).interval == 600.0


def test_a_config_without_the_sections_gets_the_defaults() -> None:
    config = make_config([])
    assert checks_settings(config) == ChecksConfig()
    assert health_settings(config) == HealthConfig()
