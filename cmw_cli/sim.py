"""`cmw sim`: the OpenAI-compatible simulator in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cmw_cli.common import Exit, ProfileOption, SetOption, console, fail, load_or_exit

if TYPE_CHECKING:
    from agent.simulator import Simulator


def sim(
    host: Annotated[str | None, typer.Option(help="Interface to bind [default: sim.host, 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: sim.port, 0 = any free port].")] = None,
    profile: ProfileOption = None,
    overrides: SetOption = None,
    ttft_ms: Annotated[float | None, typer.Option(help="Time to first token, ms [default: sim.ttft_ms, 200].")] = None,
    tps: Annotated[
        float | None, typer.Option(help="Tokens per second after the first [default: sim.tokens_per_second, 50].")
    ] = None,
    reply_tokens: Annotated[int | None, typer.Option(help="Tokens per reply [default: sim.reply_tokens, 50].")] = None,
    capacity: Annotated[
        int | None,
        typer.Option(help="Streams served at full speed; beyond it they share capacity × tps, as a batching "
                          "server does [default: sim.capacity, 0 = unlimited]."),
    ] = None,
) -> None:
    """Run the OpenAI-compatible LLM simulator until Ctrl-C (fault rates via --set sim.KEY=V).

    \b
    Example usage:
        cmw sim --port 8001 --tps 100 --set sim.error_rate=0.05
        cmw sim --capacity 8     # a backend that saturates beyond 8 streams
    """
    flags: dict[str, Any] = {}
    for key, value, flag in (("sim.host", host, "--host"), ("sim.port", port, "--port"),
                             ("sim.ttft_ms", ttft_ms, "--ttft-ms"), ("sim.tokens_per_second", tps, "--tps"),
                             ("sim.reply_tokens", reply_tokens, "--reply-tokens"),
                             ("sim.capacity", capacity, "--capacity")):
        if value is not None:
            flags[key] = (value, flag)
    settings = load_or_exit(profile, overrides, flags).settings.sim

    from agent.simulator import nominal_reply_s, serve

    def ready(simulator: Simulator) -> None:
        faults = ", ".join(f"{name} {getattr(settings, name + '_rate'):g}"
                           for name in ("error", "disconnect", "stall", "malformed")
                           if getattr(settings, name + "_rate"))
        shared = (f"capacity {settings.capacity} streams ({settings.capacity * settings.tokens_per_second:g} tokens/s "
                  "in all)" if settings.capacity else "capacity unlimited")
        console.print(f"cmw sim: OpenAI-compatible API at {simulator.base_url}", highlight=False, soft_wrap=True)
        console.print(
            f"  ttft {settings.ttft_ms:g} ms, {settings.tokens_per_second:g} tokens/s, {settings.reply_tokens} tokens "
            f"(~{nominal_reply_s(settings):.2f} s a reply), jitter {settings.jitter:g}; {shared}; "
            f"faults: {faults or 'none'}. Ctrl-C stops.",
            highlight=False, soft_wrap=True,
        )
        console.file.flush()

    try:
        serve(settings, on_ready=ready)
    except OSError as exc:
        fail(f"cannot start the simulator on {settings.host}:{settings.port}: {exc.strerror or exc}", Exit.UNREACHABLE)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        pass
