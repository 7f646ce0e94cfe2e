"""docker-compose.yml is a valid Compose file (checked against the compose-spec JSON schema)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_validates_against_the_schema():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schema)
    assert set(compose["services"]) == {"vision", "lm"}
    for svc in compose["services"].values():
        assert "vlmserve.health_probe" in svc["healthcheck"]["test"]
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert compose["services"]["lm"]["environment"]["VLMSERVE_VISION_ADDR"].startswith("dns:///vision:")


def test_schema_check_catches_a_broken_file():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["lm"]["ports"] = {"not": "a list"}
    try:
        jsonschema.validate(compose, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("an invalid compose file passed validation")
