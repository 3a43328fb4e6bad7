"""The `cmw` console script and `python -m cmw_cli`: start-up with the cyclic GC paused.

Importing typer, pydantic and rich allocates ~50,000 objects, enough to trigger several full
collections that free nothing: ~0.08 s of `cmw config show` (bench/cli_startup.py). The pause
has to begin before `cmw_cli.main` is imported, hence this separate module; ``main`` turns the
GC back on for every command that runs longer than a print.
"""

from __future__ import annotations

import gc


def run() -> None:
    gc.disable()
    from cmw_cli.main import main

    main()


if __name__ == "__main__":
    run()
