"""The key registry: every key described, with env names and allowed values; secrets masked on display."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.settings import (
    ENV_TO_KEY,
    MASK,
    REGISTRY,
    display_value,
)
from tests.agent.settings.helpers import (
    SEED_ENV,
)


@pytest.mark.parametrize("key", list(REGISTRY))
def test_every_key_has_a_description_an_allowed_range_and_a_cmw_env_name(key: str) -> None:
    spec = REGISTRY[key]
    assert spec.description.strip()
    assert spec.allowed.strip()
    assert f"CMW_{key.upper().replace('.', '__')}" in spec.env


def test_seed_env_names_are_exactly_those_of_the_design() -> None:
    seeds = {name: key for name, key in ENV_TO_KEY.items() if not name.startswith("CMW_") or name == "CMW_ADMIN_TOKEN"}
    assert seeds == SEED_ENV
    for name, key in SEED_ENV.items():
        assert REGISTRY[key].env[0] == name, "seed names come first"


def test_secrets_are_the_api_keys_and_the_admin_token() -> None:
    secrets = {k for k, spec in REGISTRY.items() if spec.secret}
    assert secrets == {"llm.api_key", "llm.openrouter_api_key", "llm.custom_api_key", "admin.token"}


def test_display_value_masks_secrets() -> None:
    spec = REGISTRY["llm.api_key"]
    assert display_value(SecretStr("sk-live"), spec) == MASK
    assert display_value(None, spec) is None
    assert display_value(Path("/x"), REGISTRY["server.state_dir"]) == "/x"
