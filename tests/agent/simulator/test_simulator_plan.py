"""What a request will do, without a socket: parsing, forced faults, and the seeded dice."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent.fingerprints import fingerprint, parse_reply_header, reply_header
from agent.settings import SimSettings
from agent.simulator.plan import (
    DEFAULT_MODEL,
    FAULT_HEADER,
    NOT_FORCED,
    Dice,
    Fault,
    RequestError,
    fault_token,
    nominal_reply_s,
    parse_completion_request,
    reply_text,
)

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def parse(headers: dict[str, str] | None = None, reply_tokens: int = 10, **fields: object):
    return parse_completion_request(json.dumps({"messages": MESSAGES, **fields}).encode(), headers or {}, reply_tokens)


@pytest.mark.parametrize(("spec", "fault"), [
    ("none", None), ("error", Fault("error")), (" Error:503 ", Fault("error", 503)),
    ("disconnect", Fault("disconnect")), ("stall", Fault("stall")), ("malformed", Fault("malformed")),
])
def test_fault_specs_parse(spec: str, fault: Fault | None) -> None:
    assert Fault.parse(spec) == fault


@pytest.mark.parametrize("spec", ["explode", "error:200", "error:600", "error:abc", "stall:3", "none:1", ""])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        Fault.parse(spec)


def test_a_plain_request_forces_no_fault_and_uses_the_configured_length() -> None:
    plan = parse()
    assert (plan.model, plan.tokens, plan.finish_reason, plan.stream, plan.include_usage) == (
        DEFAULT_MODEL, 10, "stop", False, False)
    assert plan.fault is NOT_FORCED
    assert plan.user_texts == ["hello there"]
    assert plan.prompt_tokens == 2 + 4 + 2 + 4  # words plus per-message framing
    assert plan.usage() == {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}


def test_the_smaller_token_cap_wins_and_only_a_cap_below_the_length_cuts() -> None:
    assert (parse(max_tokens=4, max_completion_tokens=6).tokens, parse(max_tokens=4).finish_reason) == (4, "length")
    assert (parse(max_tokens=50).tokens, parse(max_tokens=50).finish_reason) == (10, "stop")


def test_the_header_fault_outranks_the_model_suffix() -> None:
    assert parse(model="m@stall").fault == Fault("stall")
    assert parse({FAULT_HEADER: "none"}, model="m@stall").fault is None
    assert parse(model="m@error:418").model == "m@error:418"  # the client sees the model it asked for


def test_stream_options_are_read_only_as_given() -> None:
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    assert parse(stream=None).stream is False


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": ""}, "model"), ({"stream_options": [1]}, "stream_options"), ({"max_tokens": True}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
])
def test_invalid_fields_name_their_param(fields: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(**fields)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_reply_text_is_readable_one_word_a_token_and_fills_the_reply_length() -> None:
    text = reply_text(["a", "b"], 60)
    assert len(text.split()) == 60 and parse_reply_header(text) is None
    assert text.startswith("You said \u201cb\u201d, your 2nd message in this conversation. I'm cmw's built-in "
                           "simulator, not a real model.")
    assert reply_text(["a", "b"], 5) == "You said \u201cb\u201d, your 2nd"


def test_reply_text_quotes_the_start_of_a_long_message_on_one_line() -> None:
    text = reply_text(["one two\nthree " + "word " * 30], 30)
    assert "You said \u201cone two three word word word word word word word word word\u2026\u201d" in text
    assert "first message" in text


def test_reply_text_opens_with_the_fingerprints_header_only_for_a_load_test_canary() -> None:
    said = ["cw3-beef turn 1", "cw3-beef turn 2"]
    text = reply_text(said, 5)
    assert text == f"{reply_header(said)} You said \u201ccw3-beef turn"
    assert parse_reply_header(text) == (2, [fingerprint(m) for m in said])
    assert parse_reply_header(reply_text(["cw3-beef earlier", "no canary now"], 5)) is None
    assert parse_reply_header(reply_text(["cw3-bee short hex"], 5)) is None


def test_nominal_reply_is_ttft_plus_the_gaps_between_tokens() -> None:
    assert nominal_reply_s(SimSettings(ttft_ms=200, tokens_per_second=50, reply_tokens=51)) == pytest.approx(1.2)


def test_a_fault_strikes_half_way_but_never_before_the_first_token() -> None:
    assert [fault_token(n) for n in (1, 2, 3, 12)] == [1, 1, 1, 6]


def test_dice_bands_give_each_fault_its_share_and_repeat_with_a_seed() -> None:
    settings = SimSettings(seed=3, error_rate=0.1, disconnect_rate=0.2, stall_rate=0.3, malformed_rate=0.1,
                           error_statuses=[502])
    dice = Dice(settings)
    draws = [dice.fault(NOT_FORCED) for _ in range(4000)]
    again = Dice(settings)
    assert draws == [again.fault(NOT_FORCED) for _ in range(4000)]
    shares = Counter(f.kind if f else "none" for f in draws)
    for kind, rate in (("error", 0.1), ("disconnect", 0.2), ("stall", 0.3), ("malformed", 0.1), ("none", 0.3)):
        assert shares[kind] / 4000 == pytest.approx(rate, abs=0.03)
    assert {f.status for f in draws if f and f.kind == "error"} == {502}


def test_a_forced_fault_draws_nothing_but_a_bare_error_gets_a_configured_status() -> None:
    settings = SimSettings(seed=1, error_rate=1.0, error_statuses=[418])
    dice = Dice(settings)
    assert dice.fault(None) is None and dice.fault(Fault("stall")) == Fault("stall")
    assert dice.fault(Fault("error", 503)) == Fault("error", 503)
    assert dice.fault(Fault("error")) == Fault("error", 418)


def test_jitter_spreads_delays_around_the_nominal_and_none_means_exact() -> None:
    exact = Dice(SimSettings(ttft_ms=100, tokens_per_second=20, jitter=0))
    assert (exact.ttft_s(), exact.gap_s()) == (0.1, 0.05)
    jittery = Dice(SimSettings(ttft_ms=100, tokens_per_second=20, jitter=0.5, seed=2))
    gaps = [jittery.gap_s() for _ in range(200)]
    assert all(0.025 <= g <= 0.075 for g in gaps) and len(set(gaps)) > 100
