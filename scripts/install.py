"""Set up the project's virtual environment: the pinned packages and the right PyTorch build.

    python3 scripts/install.py [--venv .venv] [--torch auto|cpu|cuda] [--test]
    .venv/bin/python scripts/install.py --lock      # maintainers: rewrite constraints.txt

`make setup` runs the first line (`make setup TORCH=cpu` to choose). PyTorch:
- auto (default): the CUDA build when the machine has an NVIDIA driver (`nvidia-smi` on
  PATH or /proc/driver/nvidia), else the CPU build;
- cpu: on Linux, the CPU build from PyTorch's CPU wheel index (about 200 MB instead of
  several GB of CUDA libraries). Where that index cannot be reached (checked with a short
  timeout) torch comes from pip's configured index, with a warning: from the public PyPI
  that is the CUDA build on Linux. On macOS PyPI's wheels are the CPU build already;
- cuda: torch from pip's configured index (PyPI's Linux wheels are CUDA builds).

Every package is installed under constraints.txt, the versions the tests ran with, so a
fresh machine gets what CI tested. Standard library only: it runs before the venv exists.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
TEST_REQUIREMENTS = ROOT / "requirements-test.txt"
CONSTRAINTS = ROOT / "constraints.txt"
TESTED_PYTHON = (3, 11)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5.0
# Names of the packages the CUDA build of torch pulls in (CUDA libraries, triton); kept out
# of the lock when only torch needs them. (nvidia-ml-py, which dvclive needs, stays.)
CUDA_ONLY = re.compile(r"^(triton|nvidia-.*|cuda-.*)$")


class SetupError(Exception):
    pass


@dataclass(frozen=True)
class TorchPlan:
    build: str  # "cpu" or "cuda"
    pip_args: tuple[str, ...]  # what follows `pip install`
    note: str  # one line for the user: which build, from where
    warning: bool = False


def has_cuda(which: Callable[[str], str | None] = shutil.which,
             driver: Path = Path("/proc/driver/nvidia")) -> bool:
    """An NVIDIA driver is installed: its tool is on PATH or the kernel module is loaded."""
    return which("nvidia-smi") is not None or driver.exists()


def index_reachable(url: str = CPU_INDEX, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout):
            return True
    except (OSError, ValueError):  # URLError, timeouts and HTTP errors are OSErrors
        return False


def torch_version(requirements: Path = REQUIREMENTS) -> str:
    found = re.search(r"^torch==([\w.]+)\s*$", requirements.read_text(), re.MULTILINE)
    if not found:
        raise SetupError(f"{requirements}: no 'torch==VERSION' line")
    return found.group(1)


def plan_torch(choice: str, version: str, *, platform: str, cuda: Callable[[], bool],
               cpu_index_reachable: Callable[[], bool]) -> TorchPlan:
    """Which torch build to install and how. `cuda` and `cpu_index_reachable` are probes,
    called only when the answer matters."""
    if choice not in ("auto", "cpu", "cuda"):
        raise SetupError(f"TORCH: unknown value {choice!r}; choose one of auto, cpu, cuda")
    build = choice if choice != "auto" else ("cuda" if cuda() else "cpu")
    if build == "cuda":
        return TorchPlan("cuda", (f"torch=={version}",),
                         f"torch {version}, CUDA build, from pip's index")
    if not platform.startswith("linux"):
        return TorchPlan("cpu", (f"torch=={version}",),
                         f"torch {version} from pip's index (the CPU build on {platform})")
    if cpu_index_reachable():
        # The +cpu local version exists only on the CPU index, so pip cannot pick a CUDA wheel;
        # torch's own dependencies still come from pip's index.
        return TorchPlan("cpu", (f"torch=={version}+cpu", "--extra-index-url", CPU_INDEX),
                         f"torch {version}+cpu, CPU build, from {CPU_INDEX}")
    return TorchPlan("cpu", (f"torch=={version}",),
                     f"{CPU_INDEX} is unreachable: torch {version} from pip's index instead "
                     "(from the public PyPI on Linux that is the CUDA build, several GB; "
                     "set up again with the index reachable to get the CPU build)",
                     warning=True)


def check_python(version_info: tuple[int, ...] = tuple(sys.version_info),
                 executable: str = sys.executable) -> None:
    if tuple(version_info[:2]) != TESTED_PYTHON and not os.environ.get("NMT_ANY_PYTHON"):
        found = ".".join(map(str, version_info[:3]))
        want = ".".join(map(str, TESTED_PYTHON))
        raise SetupError(
            f"Python {want} is required: the pinned packages (constraints.txt) are tested on "
            f"{want}, this is Python {found} ({executable}). Install Python {want} and run "
            f"`make setup PYTHON=python{want}` (or set NMT_ANY_PYTHON=1 to try this one)")


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SetupError(f"`pip install {' '.join(args)}` failed (see pip's message above)")


def install(venv_dir: Path, torch_choice: str, with_tests: bool) -> None:
    check_python()
    plan = plan_torch(torch_choice, torch_version(), platform=sys.platform, cuda=has_cuda,
                      cpu_index_reachable=index_reachable)
    print(("warning: " if plan.warning else "") + plan.note, flush=True)
    if not (venv_dir / "pyvenv.cfg").exists():
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    python = venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    constraints = ("-c", str(CONSTRAINTS))
    pip(python, *constraints, *plan.pip_args)
    requirements = ["-r", str(REQUIREMENTS)]
    if with_tests:
        requirements += ["-r", str(TEST_REQUIREMENTS)]
    pip(python, *constraints, *requirements, "setuptools")  # setuptools: the editable build below
    pip(python, "--no-deps", "--no-build-isolation", "-e", str(ROOT))


def requirement_names(*files: Path) -> list[str]:
    names = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                names.append(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0])
    return names


def lock_lines(roots: list[str]) -> list[str]:
    """`name==version` of the installed distributions the roots need, transitively, except
    torch and what only torch's CUDA build needs (they differ between the builds)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def closure(names: list[str], skip: str | None = None) -> dict[str, str]:
        found: dict[str, str] = {}
        todo = [canonicalize_name(name) for name in names]
        while todo:
            name = todo.pop()
            if name in found or name == skip:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                raise SetupError(f"{name}: required but not installed in {sys.prefix}") from None
            found[name] = dist.version
            for spec in dist.requires or []:
                req = Requirement(spec)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(canonicalize_name(req.name))
        return found

    everything, without_torch = closure(roots), closure(roots, skip="torch")
    return [f"{name}=={version}" for name, version in sorted(everything.items())
            if name != "torch" and (name in without_torch or not CUDA_ONLY.match(name))]


def write_lock() -> None:
    roots = requirement_names(REQUIREMENTS, TEST_REQUIREMENTS) + ["setuptools"]
    header = (f"# Every package requirements*.txt need, as tested (Python {sys.version.split()[0]}, "
              f"{sys.platform}).\n# Written by `make lock`. torch is pinned in requirements.txt; "
              "its CUDA-only packages follow the build.\n")
    CONSTRAINTS.write_text(header + "".join(line + "\n" for line in lock_lines(roots)))
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--torch", default=os.environ.get("TORCH") or "auto",
                        help="auto (default, or $TORCH), cpu or cuda")
    parser.add_argument("--test", action="store_true", help="also the test packages")
    parser.add_argument("--lock", action="store_true",
                        help="rewrite constraints.txt from the running Python's packages")
    args = parser.parse_args(argv)
    try:
        if args.lock:
            write_lock()
        else:
            install(args.venv, args.torch, args.test)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
