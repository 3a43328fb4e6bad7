"""`python -m agent`: serve the app without the CLI, from env, .env and CMW_PROFILE, plus a few flags.

The flags are the ones a launcher needs (the load tester spawns its servers this way, so agent/ never imports
cmw_cli): a profile, host, port, workers and ``--set KEY=VALUE`` overrides, ranked as ``cmw serve`` ranks them
(flags over ``--set`` over the environment). ``cmw serve`` stays the command for people.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.settings import ConfigError, load_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent", description="Serve the cmw agent app.")
    parser.add_argument("-p", "--profile", help="profile name or TOML file [default: CMW_PROFILE, else balanced]")
    parser.add_argument("--host", help="interface to bind [default: server.host]")
    parser.add_argument("--port", type=int, help="port [default: server.port; 0 = any free port]")
    parser.add_argument("--workers", type=int, help="app processes behind HAProxy [default: server.workers]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. events.chat_concurrency_limit=8 (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags: dict[str, Any] = {key: (value, flag) for key, value, flag in (
        ("server.host", args.host, "--host"),
        ("server.port", args.port, "--port"),
        ("server.workers", args.workers, "--workers"),
    ) if value is not None}
    try:
        loaded = load_settings(args.profile, args.overrides, flags=flags)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    from agent.runtime import run

    return run(loaded)


if __name__ == "__main__":
    sys.exit(main())
