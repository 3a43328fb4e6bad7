"""`cmw loadtest` and `cmw smoke`: thin commands over agent.loadtest.runner.

Nothing heavy loads at import time (`cmw --help` imports this module): httpx, rich.live and matplotlib load
inside the commands, and gradio never does — the generator speaks Gradio's queue protocol itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from cmw_cli.common import Exit, ProfileOption, SetOption, console, err_console, fail, warn

if TYPE_CHECKING:
    from rich.console import Console

    from agent.loadtest.results import Outcome
    from agent.loadtest.runner import LiveFactory

T = TypeVar("T")


def _live(quiet: bool, label: str = "") -> LiveFactory | None:
    """Live progress on stderr, only for a person at a terminal."""
    if quiet or not err_console.is_terminal:
        return None
    from agent.loadtest.report import live_progress

    def factory(progress: Any) -> Any:
        return live_progress(progress, err_console, label=label)

    return factory


def _emit(result: Outcome, *, as_json: bool, out: Path | None, plot: Path | None, quiet: bool,
          html_out: Path | None = None) -> None:
    from agent.loadtest import report
    from agent.loadtest.results import CompareResult

    if out is not None:
        report.write_json(result, out)
    if plot is not None:
        report.write_plot(result, plot)
    if html_out is not None:
        from agent.loadtest.html import write_html

        write_html(result, html_out)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    if quiet:
        return
    shown: Console = err_console if as_json else console
    if isinstance(result, CompareResult):
        shown.print(report.comparison_table(result))
    else:
        report.print_summary(result, shown)
        for check in result.smoke.checks if result.smoke is not None else ():
            mark = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
            shown.print(f"{mark}  {check.check}: {check.detail}", highlight=False)
    for path in (out, plot, html_out):
        if path is not None:
            shown.print(f"wrote {path}", style="dim", highlight=False)


def _finish(result: Outcome) -> None:
    from agent.loadtest.results import CompareResult
    from agent.loadtest.runner import verdict

    for run in result.runs if isinstance(result, CompareResult) else (result,):
        generator = run.meta.generator
        if run.meta.interrupted:
            warn("interrupted: the figures cover the run up to Ctrl-C")
        if generator.inconclusive:
            warn("inconclusive: the load generator itself was busy (" + "; ".join(generator.reasons)
                 + "); figures may understate the server")
    code, reasons = verdict(result)
    if code:
        fail("\n".join(reasons), Exit(code))


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; turn each kind of failure into its exit code with one clear line."""
    from agent.loadtest.protocol import TargetError
    from agent.loadtest.slo import SloError
    from agent.loadtest.spawn import SpawnError
    from agent.loadtest.workload import WorkloadError
    from agent.settings import ConfigError

    try:
        return action()
    except (SloError, ConfigError, WorkloadError) as exc:
        fail(str(exc), Exit.BAD_INPUT)
    except TargetError as exc:
        fail(str(exc), Exit.UNREACHABLE if exc.unreachable else Exit.BAD_INPUT)
    except SpawnError as exc:
        head, _, tail = str(exc).partition("\n")
        if tail:
            err_console.print(tail, style="dim", highlight=False, markup=False)
        fail(head, Exit.UNREACHABLE)


def loadtest(
    url: Annotated[str | None, typer.Option("--url", help="A running Gradio chat app (cmw's or any other).")] = None,
    spawn: Annotated[
        bool, typer.Option("--spawn", help="Start `cmw serve` on a free loopback port for the run.")
    ] = False,
    profile: ProfileOption = None,
    overrides: SetOption = None,
    app_spec: Annotated[str | None, typer.Option(
        "--app", help="With --spawn/--compare: serve this Gradio app (`cmw serve APP`: path/app.py[:attr] or "
                      "module:attr) instead of cmw's agent.")] = None,
    users: Annotated[int | None, typer.Option(help="Virtual users [default: 10; open loop: unlimited].")] = None,
    turns: Annotated[int, typer.Option(help="Messages each user sends.")] = 3,
    rate: Annotated[float | None, typer.Option(help="Open loop: requests per second, Poisson arrivals.")] = None,
    duration: Annotated[
        float | None, typer.Option(help="Hard bound on the run, seconds [default: 300; open loop: 60].")
    ] = None,
    ramp_up: Annotated[float, typer.Option("--ramp-up", help="Seconds over which users start.")] = 0.0,
    think_time: Annotated[float, typer.Option("--think-time", help="Seconds a user waits between turns.")] = 0.0,
    warmup: Annotated[float, typer.Option(help="Seconds at the start whose turns are left out of figures.")] = 0.0,
    warmup_turns: Annotated[
        int, typer.Option("--warmup-turns", help="First turns of each user left out of figures.")
    ] = 0,
    max_requests: Annotated[int, typer.Option("--max-requests", help="Hard cap on requests sent.")] = 10_000,
    timeout: Annotated[float, typer.Option(help="Seconds a turn may take before it counts as a timeout.")] = 120.0,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="Objective, e.g. 'ttft.p95<2s', 'errors<1%', 'efficiency>0.9' (repeatable)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON report (every turn) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG: latency over time, TTFT/end-to-end spread, server queue, errors.")] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write one self-contained HTML report (opens offline; share it as a file).")] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="Same workload per profile on spawned servers, e.g. sequential,balanced,high-performance."),
    ] = None,
    api_name: Annotated[
        str | None,
        typer.Option("--api-name", help="The app's chat endpoint [default: chat, else the one endpoint that takes a "
                                        "message and returns a chat].", show_default=False),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="CMW_ADMIN_TOKEN", help="Admin token, to read the server's queue figures.")
    ] = None,
    chat_limit: Annotated[
        int | None, typer.Option("--chat-limit", help="The server's chat concurrency limit, for efficiency.")
    ] = None,
    service_time: Annotated[
        float | None, typer.Option("--service-time", help="One reply's nominal seconds alone, for efficiency.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of open-loop arrivals.")] = None,
    prime: Annotated[
        int, typer.Option(help="Uncounted turns sent first, one by one, so server start-up cost is left out.")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress and no tables.")] = False,
) -> None:
    """Load-test a Gradio chat app: queue wait, TTFT, inter-token gaps, throughput, errors, session isolation.

    Exit codes: 0 ok, 1 an SLO was breached, 2 bad usage, 3 session isolation violated, 4 unreachable.

    \b
    Example usage:
        cmw loadtest --spawn -p balanced --users 12 --turns 3 --out run.json
        cmw loadtest --url http://127.0.0.1:7860 --rate 5 --duration 30 --slo 'ttft.p95<2s' --slo 'errors<1%'
        cmw loadtest --compare sequential,balanced,high-performance --users 10 --turns 2 --html report.html
        cmw loadtest --spawn --app examples/chat_app.py -p balanced --users 16
    """
    from agent.loadtest.results import CompareResult
    from agent.loadtest.runner import Target
    from agent.loadtest.runner import compare as run_compare
    from agent.loadtest.runner import loadtest as run_loadtest
    from agent.loadtest.workload import Workload

    if compare and url:
        fail("--compare starts a server per profile: it cannot be used with --url")
    if not compare and bool(url) == bool(spawn):
        fail("give exactly one target: --url URL, or --spawn [-p PROFILE]")
    if url and (profile or overrides or app_spec):
        fail("-p/--set/--app configure a spawned server: use them with --spawn or --compare, not --url")
    if app_spec:
        overrides = [*(overrides or []), f"server.app={_app_path(app_spec)}"]
    if url and not url.startswith(("http://", "https://")):
        fail(f"--url {url!r}: expected http://HOST:PORT[/path]")
    for flag, path in (("--out", out), ("--plot", plot), ("--html", html_out)):
        if path is not None and not path.parent.is_dir():  # before the run, not after minutes of load
            fail(f"{flag} {path}: no directory {path.parent}")
    workload = Workload(
        users=users if users is not None else (0 if rate is not None else 10), turns=turns, rate=rate,
        duration=duration if duration is not None else (60.0 if rate is not None else 300.0),
        ramp_up=ramp_up, think_time=think_time, warmup_s=warmup, warmup_turns=warmup_turns,
        max_requests=max_requests, timeout=timeout, seed=seed, prime=prime,
    )
    if compare:
        profiles = [p.strip() for p in compare.split(",") if p.strip()]
        if len(profiles) < 2:
            fail(f"--compare {compare!r}: name at least two profiles, e.g. sequential,balanced")

        def announce(name: str) -> None:
            if not quiet:
                err_console.print(f"[bold]{name}[/]: starting a server (python -m agent)", highlight=False)

        result: Outcome = _guarded(lambda: run_compare(
            profiles, workload, overrides=list(overrides or []), slos=list(slo or []), service_time=service_time,
            live=_live(quiet), on_profile=announce))
    else:
        target = Target(url=url, spawn=spawn, profile=profile, overrides=tuple(overrides or ()), token=token,
                        api_name=api_name)
        result = _guarded(lambda: run_loadtest(target, workload, slos=list(slo or []), chat_limit=chat_limit,
                                               service_time=service_time, live=_live(quiet)))
    _emit(result, as_json=as_json, out=out, plot=plot, quiet=quiet, html_out=html_out)
    admin_status = (result.runs[0] if isinstance(result, CompareResult) else result).meta.admin.status
    if admin_status not in ("ok", "no token given") and not quiet:
        err_console.print(f"admin queue figures skipped: {admin_status}", style="dim")
    _finish(result)


def _app_path(spec: str) -> str:
    """The app spec with its file made absolute, so the spawned server finds it whatever its directory."""
    path, colon, attr = spec.rpartition(":") if spec.count(":") == 1 and not spec.startswith(":") else (spec, "", "")
    if path.endswith(".py") and Path(path).is_file():
        return str(Path(path).resolve()) + colon + attr
    return spec


def smoke(
    profile: ProfileOption = None,
    overrides: SetOption = None,
    users: Annotated[int, typer.Option(help="Virtual users.")] = 4,
    turns: Annotated[int, typer.Option(help="Messages each user sends.")] = 2,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress and no tables.")] = False,
) -> None:
    """CI preset: spawn `cmw serve`, a short load, isolation, loose SLOs, health and admin; exit 0 only if all hold.

    Exit codes: 0 all held, 1 a check failed, 2 bad usage, 3 session isolation violated, 4 the server did not start.

    \b
    Example usage:
        cmw smoke -p constrained
    """
    from agent.loadtest.runner import smoke as run_smoke

    if users < 1 or turns < 1:
        fail("--users and --turns need at least 1")
    result = _guarded(lambda: run_smoke(profile, overrides=list(overrides or []), users=users, turns=turns,
                                        live=_live(quiet, "smoke")))
    _emit(result, as_json=as_json, out=out, plot=None, quiet=quiet)
    _finish(result)
    if not quiet:
        (err_console if as_json else console).print("[green]smoke passed[/]", highlight=False)
