"""``make bench``: run every benchmark on this machine and write what they print into
bench/RESULTS.md, under a heading with the date, the machine and the library versions.

The section between the ``make bench`` markers is replaced on every run; the hand-written
sections below it (runs on lent GPUs, with their readings) stay as they are.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SCRIPTS = ("prm_scoring.py", "search_batching.py", "sft_throughput.py", "planner_memory.py", "operator_scale.py")
START, END = "<!-- make bench: start -->", "<!-- make bench: end -->"


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "peft", "kopf"))
    return (f"{platform.node()}: {os.cpu_count()} CPU cores, {device}; Python {platform.python_version()}, "
            f"{versions}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def run(script: str) -> str:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True)
    # Blank lines separate a script's tables; runs of them collapse to one.
    output = re.sub(r"\n\s*\n", "\n\n", result.stdout.strip())
    status = "" if result.returncode == 0 else f"\n\nFAILED (exit {result.returncode}):\n\n    " + \
        "\n    ".join(result.stderr.strip().splitlines()[-15:])
    return f"### `{script}` ({time.monotonic() - started:.0f} s)\n\n" + output + status


def section(bodies: list[str]) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([START, "## Latest `make bench` run", "", f"- **Date**: {stamp}", f"- **Machine**: {machine()}",
                      "", "\n\n".join(bodies), END])


def write(text: str) -> None:
    current = RESULTS.read_text()
    if START in current:
        before, rest = current.split(START, 1)
        current = before + text + rest.split(END, 1)[1]
    else:
        title, _, rest = current.partition("\n## ")
        current = f"{title}\n{text}\n\n## {rest}"
    RESULTS.write_text(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=SCRIPTS, help="run only these scripts")
    args = parser.parse_args(argv)
    bodies = []
    for script in args.only or SCRIPTS:
        print(f"running {script} ...", flush=True)
        bodies.append(run(script))
        print(bodies[-1], flush=True)
    write(section(bodies))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
