"""The benchmark records: one JSON Lines file per benchmark family under bench/results/.

Every row says when, where and how it was measured (``date``, ``commit``, ``machine``,
``command``), then what was measured. A script appends a row per run and never rewrites
the file; where a configuration is measured again, the later row is the one that
counts (:func:`latest`). The docs' tables are produced from these files by
``bench/tables.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from typing import Callable, Dict, Hashable, Iterable, List, Optional

from fastalign import settings

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def path(family: str) -> str:
    """The records file of a benchmark family, e.g. ``distill_paired``."""
    return os.path.join(RESULTS, f"{family}.jsonl")


def add_options(parser, family: str, data: bool = True) -> None:
    """A script's ``--records`` (the family's file; ``''`` for none) and, for scripts
    that read data sets, ``--root``."""
    if data:
        parser.add_argument("--root", default=None,
                            help="data root (default: $FASTALIGN_DATA, else ~/.cache/fastalign/datasets)")
    parser.add_argument("--records", default=path(family),
                        help=f"the JSON Lines file rows go to (default bench/results/{family}.jsonl; '' for none)")


def commit() -> Optional[str]:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or None
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> str:
    """The CPU model and count, the OS and the load average at the time of the call."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, load {load}"


def command(argv: Optional[List[str]] = None) -> str:
    """The command line of this process, as it can be typed again anywhere: the script
    relative to the repository, the data root as ``DATA`` and the home folder as ``~``
    (a record names no path of the machine it ran on)."""
    argv = sys.argv if argv is None else argv
    script = argv[0]
    if script.endswith(".py"):
        script = "python " + os.path.relpath(script, os.path.dirname(HERE))
    data = settings.data_root()
    home = os.path.expanduser("~")

    def portable(arg: str, previous: str) -> str:
        if previous == "--root" or arg.startswith("--root="):
            return "--root=DATA" if arg.startswith("--root=") else "DATA"
        if data and arg.startswith(data.rstrip("/")):
            arg = "DATA" + arg[len(data.rstrip("/")):]
        elif home != "/" and arg.startswith(home + "/"):
            arg = "~" + arg[len(home):]
        return arg

    return " ".join([script] + [shlex.quote(portable(a, p)) for p, a in zip(argv, argv[1:])])


def stamp(row: dict) -> dict:
    """``row`` with date, commit, machine and command first (values the row already
    has win)."""
    head = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
            "machine": machine(), "command": command()}
    return {**head, **row}


def _strict(value):
    """JSON Lines rows hold no NaN or inf (they are not JSON): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def append(file: str, row: dict) -> dict:
    """Stamp ``row`` and add it as one line to ``file`` (none when ``file`` is empty);
    returns the stamped row."""
    row = _strict(stamp(row))
    if not file:
        return row
    os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    with open(file, "a") as f:
        f.write(json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n")
    return row


def read(file: str) -> List[dict]:
    """Every row of ``file``, oldest first (none when it is empty or does not exist)."""
    if not file or not os.path.exists(file):
        return []
    with open(file) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest(rows: Iterable[dict], key: Callable[[dict], Hashable]) -> Dict[Hashable, dict]:
    """The last row of each ``key(row)``: a configuration measured again counts once."""
    out: Dict[Hashable, dict] = {}
    for row in rows:
        out[key(row)] = row
    return out
