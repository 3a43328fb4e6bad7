"""Which limit each event of a served app gets: api names, globs, groups, the app's own limits, the master switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.apps.limits import GROUP_PREFIX, best_match, event_limits
from agent.apps.loading import load_app
from agent.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "blocks_app.py"


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return load_app(str(EXAMPLE)).blocks


def limits(demo, *sets: str) -> dict[str, tuple[int | None, str]]:  # type: ignore[no-untyped-def]
    settings = load_settings("balanced", list(sets), environ={}, env_file=None).settings
    return {e.api_name: (e.limit, e.source) for e in event_limits(demo, settings)}


def test_an_exact_name_beats_a_glob_and_the_longer_glob_beats_the_shorter() -> None:
    assert best_match("tool_upper", ["tool_*", "tool_upper", "*"]) == "tool_upper"
    assert best_match("tool_upper", ["t*", "tool_*"]) == "tool_*"
    assert best_match("generate", ["tool_*"]) is None


def test_unnamed_events_take_the_default_and_the_apps_own_limit_stays(demo) -> None:  # type: ignore[no-untyped-def]
    got = limits(demo)
    assert got["generate"] == (5, "queue.default_concurrency_limit")  # balanced's default
    assert got["slow_report"] == (1, "app")  # concurrency_limit=1 in the app's code


def test_a_name_and_a_glob_from_the_profile(demo) -> None:  # type: ignore[no-untyped-def]
    got = limits(demo, "events.limits.generate=4", "events.limits.tool_*=2", "events.limits.tool_count=3")
    assert got["generate"] == (4, "events.limits[generate]")
    assert got["tool_upper"] == (2, "events.limits[tool_*]")
    assert got["tool_count"] == (3, "events.limits[tool_count]")


def test_the_apps_own_limit_wins_unless_the_profile_overrides_it(demo) -> None:  # type: ignore[no-untyped-def]
    assert limits(demo, "events.limits.slow_report=4")["slow_report"] == (1, "app")
    assert limits(demo, "events.limits.slow_report=4", "events.override_app_limits=true")["slow_report"] == (
        4, "events.limits[slow_report]",
    )


def test_a_group_shares_one_pool(demo) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings("balanced", ['events.groups.tools=["tool_*"]', "events.limits.tools=2"], environ={},
                             env_file=None).settings
    grouped = {e.api_name: e for e in event_limits(demo, settings)}
    assert grouped["tool_upper"].concurrency_id == grouped["tool_count"].concurrency_id == GROUP_PREFIX + "tools"
    assert (grouped["tool_upper"].limit, grouped["tool_upper"].source) == (2, "events.groups[tools]")
    assert grouped["generate"].concurrency_id != grouped["tool_upper"].concurrency_id


def test_the_master_switch_makes_every_event_one(demo) -> None:  # type: ignore[no-untyped-def]
    got = limits(demo, "enable_concurrent_processing=false", "events.limits.generate=4")
    assert {limit for limit, _ in got.values()} == {1}


def test_triggers_name_the_component_and_event(demo) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings("balanced", [], environ={}, env_file=None).settings
    triggers = {e.api_name: e.triggers for e in event_limits(demo, settings)}
    assert triggers["generate"] == ("button(Generate).click",)
