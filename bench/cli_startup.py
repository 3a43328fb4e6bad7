"""Whole-process start-up time of the CLI next to bare Python and `import gradio`.

Usage:  .venv/bin/python bench/cli_startup.py [--runs 7] [--skip-gradio] [--check]

Each command runs once to warm the OS cache and write .pyc files, then --runs times. The table
shows the median wall time (what the targets apply to), the fastest run, and the median CPU time
(user + sys) of the child: on a busy machine wall time includes waiting for a core, CPU time
does not. Children run from an empty temporary directory (no stray .env) and without
PYTHONDONTWRITEBYTECODE, so cmw's own modules load from .pyc as they do from an installed wheel.
--check exits 1 when a median is over its target.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Targets of issue 2: `cmw --help` and `cmw config show` must feel instant next to gradio's ~4 s.
TARGETS = {"cmw --help": 0.25, "cmw config show": 0.40}


def _cmw() -> str:
    beside = Path(sys.executable).with_name("cmw")
    found = str(beside) if beside.exists() else shutil.which("cmw")
    if not found:
        sys.exit("cmw is not installed in this environment (pip install -e .)")
    return found


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], runs: int, cwd: str, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(runs):
        cpu, start = _cpu(), time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return walls, cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (default 7)")
    parser.add_argument("--skip-gradio", action="store_true", help="leave out `import gradio` (~4 s a run)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a median is over its target")
    args = parser.parse_args()

    cmw, python = _cmw(), sys.executable
    commands: dict[str, list[str]] = {
        "python -c pass": [python, "-c", "pass"],
        "cmw --help": [cmw, "--help"],
        "cmw config show": [cmw, "config", "show"],
    }
    if not args.skip_gradio:
        commands['python -c "import gradio"'] = [python, "-c", "import gradio"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CMW_ENV_FILE")}

    over: list[str] = []
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.runs} runs each after one warm-up; {os.cpu_count()} CPUs, load average {load}")
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'cpu s':>7} {'target s':>9}")
    with tempfile.TemporaryDirectory(prefix="cmw-bench-") as cwd:
        for name, argv in commands.items():
            times, cpus = _time(argv, args.runs, cwd, env)
            median = statistics.median(times)
            target = TARGETS.get(name)
            verdict = ""
            if target is not None:
                verdict = "ok" if median <= target else "OVER"
                if median > target:
                    over.append(name)
            shown = f"{target:.2f}" if target is not None else "-"
            cpu = statistics.median(cpus)
            print(f"{name:<28} {median:>9.3f} {min(times):>7.3f} {cpu:>7.3f} {shown:>9}  {verdict}", flush=True)
    return 1 if args.check and over else 0


if __name__ == "__main__":
    raise SystemExit(main())
