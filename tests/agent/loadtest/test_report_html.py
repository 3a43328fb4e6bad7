"""The shareable reports of a run: the HTML file (sections, escaping, nothing fetched), the PNG, the queue series.

Results are built the way the runner builds them (``build_result`` over what an engine observed), so no server is
needed, except for the admin watch, which polls a real HTTP server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.loadtest.engine import RunData
from agent.loadtest.html import SECTIONS, render
from agent.loadtest.htmlkit import Html, Series, esc, histogram, line_chart, nice_ticks, table
from agent.loadtest.protocol import Endpoint
from agent.loadtest.report import write_plot
from agent.loadtest.results import (
    AdminFigures,
    EventPeak,
    GeneratorReport,
    Nominal,
    QueuePoint,
    RunResult,
    TurnRecord,
)
from agent.loadtest.runner import Target, build_result, compare_runs
from agent.loadtest.slo import parse_slos
from agent.loadtest.spawn import HOST, free_port
from agent.loadtest.watch import AdminWatch, QueueSeries
from agent.loadtest.workload import Workload

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# --------------------------------------------------------------------------- reading the report back


@dataclass
class Part:
    """What one ``<section>`` holds: its tags by name, those drawing data (in a chart's series), body rows, text."""

    tags: Counter[str] = field(default_factory=Counter)
    marks: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    text: list[str] = field(default_factory=list)

    @property
    def words(self) -> str:
        return " ".join(self.text)


class Report(HTMLParser):
    """The document as a browser would parse it: every tag and attribute, and the content of each section."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, Part] = {}
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.text: list[str] = []
        self.style = ""
        self._current: Part | None = None
        self._in_body = self._in_style = self._in_series = False
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += [(tag, name, value or "") for name, value in attrs]
        self._in_style = tag == "style"
        if tag == "section":
            self._current = self.sections.setdefault(dict(attrs).get("id") or "", Part())
        elif self._current is not None:
            self._current.tags[tag] += 1
            self._current.marks[tag] += self._in_series
            self._current.rows += tag == "tr" and self._in_body
        self._in_body = self._in_body or tag == "tbody"
        self._in_series = self._in_series or (tag == "g" and dict(attrs).get("class") == "series")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._current = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "g":
            self._in_series = False
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
            return
        self.text.append(data)
        if self._current is not None and data.strip():
            self._current.text.append(data.strip())


# --------------------------------------------------------------------------- results built without a server


def turn(user: int, join: float, e2e: float | None, *, error: str | None = None, detail: str | None = None,
         session: str | None = None, violation: tuple[str, ...] = ()) -> TurnRecord:
    done = error is None and e2e is not None
    return TurnRecord(user=user, session=session or f"s{user}", turn=1, t_join=join, warmup=False, error=error,
                      detail=detail, queue_wait=0.01 if done else None, ttft=e2e / 4 if done else None,
                      e2e=e2e if done else None, tokens=10 if done else 0, gaps=(0.01, 0.02) if done else (),
                      t_start=join + 0.01, t_end=join + e2e if e2e is not None else None, violation=violation,
                      isolation_checked=done)


def series(event: str = "chat") -> dict[str, tuple[QueuePoint, ...]]:
    running = [0, 1, 2, 3, 3, 2, 0]
    return {event: tuple(QueuePoint(i * 0.25, r, max(0, i - 2) if r == 3 else 0, 3) for i, r in enumerate(running))}


def build(turns: list[TurnRecord], *, profile: str = "balanced", slos: tuple[str, ...] = ("ttft.p95<2s",),
          admin: AdminFigures | None = None, api_name: str = "chat", url: str = "http://127.0.0.1:1") -> RunResult:
    endpoint = Endpoint(base_url=url, api_prefix="/gradio_api", api_name=api_name, fn_index=0, trigger_id=None,
                        input_types=("textbox",), defaults=(None,), output_types=("chatbot",), gradio_version="6.0",
                        protocol="sse_v3")
    if admin is None:
        admin = AdminFigures(status="ok", samples=7, peak={"chat": EventPeak(running=3, waiting=2, limit=3)},
                             chat_limit=3, series=series())
    data = RunData(endpoint=endpoint, workload=Workload(users=4, turns=1), turns=tuple(turns), started_at=0.0,
                   duration_s=2.0, offered_end=1.5,
                   generator=GeneratorReport(cpu_share=0.1, loop_lag_ms={"p99": 1.0}, inconclusive=False),
                   admin=admin, unfinished=0, skipped_arrivals=0, users_started=4)
    return build_result(data, parse_slos(list(slos)), Nominal(3, "settings", 1.0, "settings:sim"),
                        target=Target(spawn=True, profile=profile), profile=profile, settings=None)


def healthy(profile: str = "balanced", speed: float = 1.0) -> RunResult:
    turns = [turn(u, 0.1 * u, speed * (0.5 + 0.1 * u)) for u in range(4)]
    return build(turns + [turn(9, 0.5, None, error="timeout", detail="no reply in 120 s")], profile=profile)


# --------------------------------------------------------------------------- the HTML report


def test_every_section_is_present_and_filled() -> None:
    result = healthy()
    report = Report(render(result))
    assert set(report.sections) == set(SECTIONS) - {"comparison"}
    summary = report.sections["summary"]
    for expected in ("throughput", "efficiency", "queue wait p50 / p95 / p99", "TTFT p50 / p95 / p99",
                     "end-to-end p50 / p95 / p99", "inter-token p50 / p95 / p99", "errors", "isolation",
                     "SLO ttft.p95<2s", "pass", "held", "load generator"):
        assert expected in summary.text, expected
    assert summary.rows >= 12 + 4  # the totals, then a latency percentile table
    over_time = report.sections["latency-over-time"]
    assert over_time.tags["svg"] == 1 and over_time.marks["circle"] == 4 * 3  # e2e, TTFT, queue wait per turn
    assert "failed: timeout" in over_time.text and over_time.marks["path"] == 1  # the failed turn's cross
    spread = report.sections["distributions"]
    assert spread.tags["svg"] == 2 and spread.marks["rect"] >= 2 and spread.marks["path"] == 2  # bars; CDFs
    queue = report.sections["server-queue"]
    assert queue.tags["svg"] == 1 and queue.marks["path"] == 3
    assert {"chat running", "chat waiting", "chat limit"} <= set(queue.text)
    assert queue.rows == 1  # the peaks table
    errors = report.sections["errors"]
    assert errors.marks["rect"] == 1 and "no reply in 120 s" in errors.text and errors.rows == 5 + 1
    assert "api_name=chat (fn 0, sse_v3)" in report.sections["run"].text
    assert {ref for tag, name, ref in report.attrs if name == "href"} == {f"#{ref}" for ref in report.sections}


def test_isolation_that_cannot_be_judged_and_a_violation_say_so() -> None:
    blind = build([replace(turn(0, 0, 0.5), isolation_checked=False)])
    assert "cannot be judged" in Report(render(blind)).sections["summary"].text
    broken = build([turn(0, 0, 0.5), turn(1, 0, 0.5, violation=("history carries other sessions' canaries cw7",))])
    report = Report(render(broken))
    assert "VIOLATED" in report.sections["summary"].text
    assert "history carries other sessions' canaries cw7" in report.sections["errors"].text


def test_without_server_figures_the_queue_section_says_why() -> None:
    result = build([turn(0, 0, 0.5)], admin=AdminFigures(status="no token given"))
    queue = Report(render(result)).sections["server-queue"]
    assert queue.tags["svg"] == 0
    assert "no server figures (no token given)" in queue.words and "--token" in queue.words


def test_a_run_where_every_turn_failed_still_renders_every_section() -> None:
    result = build([turn(u, 0.1 * u, None, error="queue_full", detail="Queue is full") for u in range(3)])
    report = Report(render(result))
    assert set(report.sections) == set(SECTIONS) - {"comparison"}
    over_time = report.sections["latency-over-time"]
    assert over_time.marks == Counter({"path": 3}) and "failed: queue_full" in over_time.text
    assert "end-to-end" not in over_time.text  # no legend for a latency no turn had
    assert "no data" in report.sections["distributions"].text
    assert "Queue is full" in report.sections["errors"].text


def test_compare_puts_the_profiles_side_by_side() -> None:
    sequential, balanced = healthy("sequential", speed=2.0), healthy("balanced")
    faster = 2 * sequential.summary.throughput_rps
    balanced = replace(balanced, summary=replace(balanced.summary, throughput_rps=faster))
    report = Report(render(compare_runs(["sequential", "balanced"], [sequential, balanced])))
    assert set(report.sections) == set(SECTIONS)
    comparison = report.sections["comparison"]
    assert comparison.rows == 2
    for header in ("turns/s", "speed-up vs sequential", "TTFT p95", "end-to-end p95", "errors"):
        assert header in comparison.text
    assert "1.00×" in comparison.text and "2.00×" in comparison.text
    assert report.sections["latency-over-time"].tags["svg"] == 2
    assert report.sections["latency-over-time"].marks["circle"] == 2 * 4 * 3
    assert report.sections["server-queue"].tags["svg"] == 2 and report.sections["server-queue"].marks["path"] == 6
    spread = report.sections["distributions"]
    assert spread.tags["svg"] == 4 and {"TTFT CDF by profile", "end-to-end CDF by profile"} <= set(spread.text)
    assert {"sequential: latency percentiles", "balanced: latency percentiles"} <= set(report.sections["summary"].text)


def test_strings_from_the_run_cannot_inject_markup() -> None:
    """A server's error text, an endpoint's name, a profile, a URL, an event and a session: all shown as text."""
    evil_turns = [turn(0, 0, 0.5, session=EVIL), turn(1, 0.1, None, error="app_error", detail=EVIL),
                  turn(2, 0.2, 0.5, violation=(EVIL,))]
    admin = AdminFigures(status="ok", samples=3, peak={EVIL: EventPeak(running=1, waiting=0, limit=1)},
                         series=series(EVIL))
    result = build(evil_turns, profile=EVIL, api_name=EVIL, url=f"http://{EVIL}", admin=admin)
    result = replace(result, summary=replace(result.summary, slo={EVIL: result.summary.slo["ttft.p95<2s"]}))
    document = render(compare_runs([EVIL, "b"], [result, result]))
    report = Report(document)
    assert report.tags["script"] == 0 and report.tags["img"] == 0
    assert not [(tag, name) for tag, name, _ in report.attrs if name.startswith("on")]
    assert sum(EVIL in text for text in report.text) >= 8  # shown, as text, wherever the run put it
    assert "<script>" not in document and "&lt;script&gt;" in document


def test_the_report_fetches_nothing() -> None:
    """No script, stylesheet, font, image or frame, no URL in an attribute or the CSS: it opens offline."""
    document = render(compare_runs(["a", "b"], [healthy("a"), healthy("b")]))
    report = Report(document)
    for tag in ("script", "link", "img", "iframe", "object", "embed", "image", "use", "audio", "video", "source"):
        assert report.tags[tag] == 0, tag
    for tag, name, value in report.attrs:
        assert "http" not in value.lower() and "url(" not in value.lower(), (tag, name, value)
        assert name not in ("src", "srcset", "xmlns", "xlink:href", "action"), (tag, name)
        assert name != "href" or value.startswith("#"), (tag, value)
    assert "url(" not in report.style and "@import" not in report.style and "http" not in report.style
    assert "http://127.0.0.1:1" in report.sections["run"].words  # the target, as text


def test_html_building_blocks_escape_and_draw() -> None:
    assert esc("<b>") == "&lt;b&gt;" and esc(Html("<b>")) == "<b>"
    rows = Report(table(["a", "b"], [["<i>", 1], [None, 2.5]])).tags
    assert rows["i"] == 0 and rows["tr"] == 3
    chart = Report(line_chart([Series("<x>", [(0, 1), (1, 2)], "points")], title="t", x_label="x", y_label="y"))
    assert chart.tags["circle"] == 2 + 1 and "<x>" in chart.text  # two points and the legend's swatch
    bars = Report(histogram({"a": [0.1, 0.2, 0.9], "b": [0.5]}, title="h", x_label="s", bins=10, stacked=True))
    assert bars.tags["rect"] == 4 + 2  # three bins of a, one of b, and the two legend swatches
    assert "no data" in Report(line_chart([], title="t", x_label="x", y_label="y")).text
    assert nice_ticks(0, 1.21) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert nice_ticks(0, 3, 4, integer=True) == [0.0, 1.0, 2.0, 3.0]


def test_the_cli_writes_the_html_for_a_result(tmp_path: Path) -> None:
    from agent.loadtest.html import write_html

    path = tmp_path / "report.html"
    write_html(healthy(), path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------- the PNG


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_plot_has_a_column_per_profile(tmp_path: Path) -> None:
    single, compared = tmp_path / "one.png", tmp_path / "two.png"
    write_plot(healthy(), single)
    blind = build([turn(0, 0, 0.5)], profile="c", admin=AdminFigures("no token given"))
    write_plot(compare_runs(["a", "b", "c"], [healthy("a"), healthy("b"), blind]), compared)
    one, three = _png_size(single), _png_size(compared)
    assert three[0] > one[0] and three[1] > one[1]  # three columns of four panels vs one 2×2 figure


# --------------------------------------------------------------------------- the server's figures over time


def test_the_queue_series_stays_bounded_and_keeps_each_burst() -> None:
    recorder = QueueSeries(bound=8)
    for i in range(100):
        running = 9 if i == 37 else 1
        recorder.add(float(i), {"chat": {"running": running, "waiting": 0, "limit": 3},
                                "idle": {"running": 0, "waiting": 0, "limit": 5}})
    points = recorder.points(t0=0.0)
    assert list(points) == ["chat"]  # an event that never ran or waited is left out
    chat = points["chat"]
    assert len(chat) <= 8 and recorder.stride >= 100 // 8
    assert max(p.running for p in chat) == 9 and chat[0].t == 0.0 and chat[-1].t > 99 - recorder.stride  # all of it
    assert [p.t for p in chat] == sorted(p.t for p in chat) and all(p.limit == 3 for p in chat)


class _Queue(BaseHTTPRequestHandler):
    """A cmw-shaped ``/admin/api/queue``: each GET shows one more running chat, up to the limit."""

    polls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != "Bearer t0ken":
            self.send_response(401)
            self.end_headers()
            return
        type(self).polls += 1
        running = min(type(self).polls, 3)
        body = json.dumps({"events": {"chat": {"running": running, "waiting": type(self).polls - running, "limit": 3},
                                      "logs_refresh": {"running": 0, "waiting": 0, "limit": 5}},
                           "waiting_total": 0, "in_flight": running}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, free_port()), _Queue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_admin_watch_keeps_the_servers_figures_over_time(admin_api: str) -> None:
    async def watch() -> AdminFigures:
        async with httpx.AsyncClient() as client:
            watcher = AdminWatch(client, admin_api, "t0ken")
            for _ in range(5):  # polled by hand, one after another (start() would add a timed poller)
                assert await watcher.poll_once()
            return await watcher.stop()

    _Queue.polls = 0
    figures = asyncio.run(watch())
    assert figures.samples == 5 and figures.peak["chat"] == EventPeak(running=3, waiting=2, limit=3)
    chat = figures.series["chat"]
    assert [p.running for p in chat] == [1, 2, 3, 3, 3] and [p.waiting for p in chat] == [0, 0, 0, 1, 2]
    assert list(figures.series) == ["chat"] and all(p.limit == 3 for p in chat)  # logs_refresh stayed idle
    assert [p.t for p in chat] == sorted(p.t for p in chat) and chat[0].t >= 0
    doc = figures.to_dict()
    assert doc["series"]["chat"][1] == {"t": chat[1].t, "running": 2, "waiting": 0, "limit": 3}
    assert json.loads(json.dumps(doc)) == doc
    assert "series" not in AdminFigures(status="no token given").to_dict()
