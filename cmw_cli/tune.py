"""`cmw tune`: measure the chat limit instead of guessing it, and write it down as a profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cmw_cli.common import Exit, ProfileOption, SetOption, console, err_console, fail, warn


def tune(
    url: Annotated[str | None, typer.Option("--url", help="A running cmw server: its limit is changed live.")] = None,
    spawn: Annotated[bool, typer.Option("--spawn", help="Start `cmw serve -p BASE` on a loopback port.")] = False,
    profile: ProfileOption = None,
    overrides: SetOption = None,
    token: Annotated[str | None, typer.Option(envvar="CMW_ADMIN_TOKEN", help="Admin token of --url.")] = None,
    llm: Annotated[str | None, typer.Option("--llm", help="With --spawn: provider or OpenAI-compatible URL.")] = None,
    slo: Annotated[list[str] | None, typer.Option(
        "--slo", help="Objective every candidate must meet, e.g. 'ttft.p95<2s' (repeatable) [default: errors<1%, "
                      "TTFT p95 ≤ 2 × one user's + 0.5 s, end-to-end p95 ≤ 1.5 × one user's].")] = None,
    budget: Annotated[float, typer.Option(help="Seconds the search may take; past it, the best so far.",
                                          min=10, max=86_400)] = 600.0,
    max_limit: Annotated[int, typer.Option("--max-limit", help="Largest limit tried (and ≤ server.max_threads).",
                                           min=1, max=2000)] = 64,
    workers_max: Annotated[int | None, typer.Option(
        "--workers-max", help="With --spawn: also search the number of workers, up to N.", min=1, max=64)] = None,
    turns: Annotated[int, typer.Option(help="Measured turns per user at each candidate.", min=1, max=100)] = 3,
    out: Annotated[str, typer.Option("--out", help="Profile name, or a path ending in .toml.")] = "tuned",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing profile.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of turns/s and latency per limit.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole search as JSON.")] = False,
) -> None:
    """Find the chat limit with the most turns/s whose SLOs hold, and write it as a profile.

    It measures one user first, then a closed-loop load with one user per slot at each candidate limit
    (1, 2, 4, … then a bisection), set live through the admin API. Among candidates within the noise of the
    best, the smallest limit wins.

    Exit codes: 0 written (also when the budget cut the search short), 1 no candidate met the SLOs (nothing
    written), 2 bad usage (bad --slo, profile exists without --force), 4 server unreachable or failed to start.

    \b
    Example usage:
        cmw tune --spawn -p balanced --budget 300
        cmw tune --url http://127.0.0.1:7860 --slo 'ttft.p95<1s' --out tuned-gpu
        cmw config diff balanced tuned && cmw serve -p tuned
    """
    from agent.tune.runner import TuneError, TuneRequest
    from agent.tune.runner import tune as run_tune

    if bool(url) == bool(spawn):
        fail("give exactly one target: --url URL (a running cmw server), or --spawn [-p BASE]")
    if url and (overrides or llm or workers_max):
        fail("--set/--llm/--workers-max configure a spawned server: use them with --spawn, not --url")
    if url and not url.startswith(("http://", "https://")):
        fail(f"--url {url!r}: expected http://HOST:PORT[/path]")
    path, name = _destination(out)
    if path.exists() and not force:
        fail(f"{path} already exists; pass --force to overwrite it")
    if url and token is None:
        from cmw_cli.client import connect

        token = connect(url, None).token
    request = TuneRequest(url=url, token=token, spawn=spawn, base=profile, overrides=tuple(overrides or ()),
                          llm=llm, slos=tuple(slo or ()), budget_s=budget, max_limit=max_limit,
                          workers_max=workers_max, turns=turns)

    def progress(line: str) -> None:
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)

    try:
        result = run_tune(request, progress)
    except TuneError as exc:
        fail(str(exc), Exit(exc.exit_code))
    except KeyboardInterrupt:
        raise typer.Exit(int(Exit.INTERRUPTED)) from None
    if as_json:
        print(json.dumps({**result.to_dict(), "profile": None if result.chosen_limit is None else str(path)},
                         indent=2))
    if plot is not None:
        from agent.tune.report import write_plot

        write_plot(result, plot)
    if html is not None:
        from agent.tune.report import write_html

        write_html(result, html)
    if result.chosen_limit is None:
        fail(f"no limit met the SLOs ({', '.join(result.slos)}); nothing written", Exit.CHECK_FAILED)
    from agent.tune.profile import write_profile

    write_profile(result, path, name=name)
    if result.cut_short:
        warn(f"the budget of {budget:.0f} s ran out: the search was cut short; this is the best limit found so far")
    best = result.best()
    figures = f" ({best.throughput_rps:.2f} turns/s, TTFT p95 {best.ttft_p95:.2f} s)" if best and best.ttft_p95 else ""
    workers = f", {result.chosen_workers} workers" if workers_max else ""
    tie = f"; {', '.join(map(str, result.tie()))} measured within the noise" if result.tie() else ""
    if not as_json:
        console.print(f"{result.event} limit {result.chosen_limit}{workers}{figures}{tie}", highlight=False,
                      markup=False)
        use = str(path) if name != path.stem or "/" in out else name
        console.print(f"wrote {path}; use it with: cmw serve -p {use}", highlight=False, markup=False)


def _destination(out: str) -> tuple[Path, str]:
    """(file, profile name) for --out NAME|PATH, as `cmw config init` places them."""
    from agent.settings import looks_like_path, profile_environ, user_profiles_dir
    from cmw_cli.config import PROFILE_NAME

    if looks_like_path(out):
        path = Path(out).expanduser()
        if path.suffix != ".toml":
            fail(f"--out {out}: a profile file name ends in .toml")
        return path, path.stem
    if not PROFILE_NAME.match(out):
        fail(f"--out {out!r}: use letters, digits, '.', '_' and '-', or give a path ending in .toml")
    return user_profiles_dir(profile_environ()) / f"{out}.toml", out
