"""`python -m agent`: serve the app with settings from env, .env and CMW_PROFILE (no CLI needed)."""

import sys

from agent.settings import ConfigError, load_settings


def main() -> int:
    try:
        loaded = load_settings()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    from agent.runtime import run as serve

    return serve(loaded)


if __name__ == "__main__":
    sys.exit(main())
