"""DVC started one way for every nmtlab tool (report, hypotheses): the dvc installed beside
this Python (`python -m dvc`), so the project's virtual environment is used whatever PATH
holds, and its machine-readable output (`--json`) wherever DVC has one."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nmt.errors import UserError


def command(*args: str) -> list[str]:
    """The argument list that runs `dvc ARGS...`."""
    return [sys.executable, "-m", "dvc", *args]


def run(args: list[str], repo: Path | str = ".") -> subprocess.CompletedProcess:
    """`dvc ARGS` in `repo`, output captured as text; the caller checks the return code."""
    return subprocess.run(command(*args), cwd=repo, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def run_json(args: list[str], repo: Path | str = ".", attempts: int = 3,
             pause: float = 10.0) -> Any:
    """The parsed JSON that a read-only `dvc ARGS` prints. A failure is tried again,
    `attempts` times in all, `pause` seconds apart (in a sweep's sitting one call failed
    once, DVC's generic error while another dvc command ran, and ended a wait of hours that
    the queue's workers would have finished); then UserError naming the command."""
    for attempt in range(attempts):
        proc = run(args, repo)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        if attempt + 1 < attempts:
            time.sleep(pause)
    raise UserError(f"dvc {' '.join(args)} failed {attempts} times: "
                    f"{last_line(proc.stderr or proc.stdout)}")


def exp_show(repo: Path | str = ".", pause: float = 10.0) -> list[dict]:
    """`dvc exp show --json --all-commits`: every commit with experiments, every experiment
    (queued, running, failed or finished, with its executor's state), params and metrics."""
    return run_json(["exp", "show", "--json", "--all-commits"], repo, pause=pause)


def start_workers(jobs: int, repo: Path | str = ".") -> None:
    """`dvc queue start -j JOBS`. The workers it starts keep its stdout open, so a pipe would
    block until they exit: the output goes through a temporary file."""
    with tempfile.TemporaryFile("w+") as out:
        rc = subprocess.run(command("queue", "start", "-j", str(jobs)), cwd=repo,
                            stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT).returncode
        out.seek(0)
        if rc != 0:
            raise UserError(f"dvc queue start failed: {last_line(out.read())}")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
