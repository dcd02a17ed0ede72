"""scripts/install.py: which torch build `make setup` installs, from where, and the lock."""
from __future__ import annotations

import http.server
import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.e2e import REPO

_spec = importlib.util.spec_from_file_location("install", REPO / "scripts" / "install.py")
install = importlib.util.module_from_spec(_spec)
sys.modules["install"] = install  # dataclasses look their module up by name
_spec.loader.exec_module(install)


def never(what: str):
    def probe() -> bool:
        raise AssertionError(f"{what} was probed, but the answer cannot matter")
    return probe


def plan(choice: str, *, platform: str = "linux", cuda: bool | None = None,
         reachable: bool | None = None) -> install.TorchPlan:
    return install.plan_torch(
        choice, "2.13.0", platform=platform,
        cuda=never("CUDA") if cuda is None else (lambda: cuda),
        cpu_index_reachable=never("the CPU index") if reachable is None else (lambda: reachable))


def test_no_cuda_takes_the_cpu_build_from_pytorchs_cpu_index():
    p = plan("auto", cuda=False, reachable=True)
    assert p.build == "cpu" and not p.warning
    # +cpu exists only on the CPU index: pip cannot fall back to a CUDA wheel
    assert p.pip_args == ("torch==2.13.0+cpu", "--extra-index-url", install.CPU_INDEX)


def test_unreachable_cpu_index_falls_back_to_pips_index_with_a_warning():
    p = plan("auto", cuda=False, reachable=False)
    assert p.build == "cpu" and p.warning
    assert p.pip_args == ("torch==2.13.0",)
    assert "unreachable" in p.note and "CUDA build" in p.note


def test_cuda_machine_takes_the_cuda_build_without_probing_the_cpu_index():
    p = plan("auto", cuda=True)
    assert p.build == "cuda" and p.pip_args == ("torch==2.13.0",)


def test_the_users_choice_wins_over_the_probe():
    assert plan("cpu", reachable=True).build == "cpu"  # CUDA present or not: never probed
    assert plan("cuda").build == "cuda"


def test_macos_takes_pypis_wheels_which_are_cpu_builds():
    p = plan("cpu", platform="darwin")
    assert p.build == "cpu" and p.pip_args == ("torch==2.13.0",) and not p.warning


def test_unknown_choice_is_an_error_naming_the_variable():
    with pytest.raises(install.SetupError, match="TORCH: unknown value 'gpu'"):
        plan("gpu")


def test_has_cuda_from_nvidia_smi_or_the_driver(tmp_path):
    absent = tmp_path / "no-driver"
    assert install.has_cuda(which=lambda _: "/usr/bin/nvidia-smi", driver=absent)
    assert install.has_cuda(which=lambda _: None, driver=tmp_path)
    assert not install.has_cuda(which=lambda _: None, driver=absent)


@pytest.fixture
def index_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_index_probe_is_true_only_where_the_index_answers(index_server):
    assert install.index_reachable(f"{index_server}/whl/cpu", timeout=2)
    assert not install.index_reachable(f"{index_server}/elsewhere", timeout=2)  # 404


def test_index_probe_gives_up_quickly_where_nothing_listens():
    start = time.monotonic()
    assert not install.index_reachable("http://127.0.0.1:9/whl/cpu", timeout=1)
    assert time.monotonic() - start < 5


def test_python_other_than_the_tested_one_is_refused_with_the_fix(monkeypatch):
    monkeypatch.delenv("NMT_ANY_PYTHON", raising=False)
    install.check_python((3, 11, 7), "/usr/bin/python3")
    with pytest.raises(install.SetupError) as e:
        install.check_python((3, 12, 1), "/usr/bin/python3")
    assert "Python 3.11 is required" in str(e.value) and "3.12.1" in str(e.value)
    assert "make setup PYTHON=python3.11" in str(e.value)
    monkeypatch.setenv("NMT_ANY_PYTHON", "1")
    install.check_python((3, 12, 1), "/usr/bin/python3")


def test_requirements_pin_the_installed_torch():
    assert install.torch_version() == torch.__version__.split("+")[0]


def test_runtime_and_test_requirements_are_split():
    runtime = install.requirement_names(install.REQUIREMENTS)
    test_only = install.requirement_names(install.TEST_REQUIREMENTS)
    assert "pytest" in test_only and "hydra-core" in test_only
    assert not {"pytest", "hydra-core"} & set(runtime)
    # psutil was pinned once with nothing importing it; now nmt/memory.py does
    imports_psutil = any("import psutil" in f.read_text() for f in install.ROOT.glob("nmt/*.py"))
    assert ("psutil" in runtime) == imports_psutil


@pytest.mark.skipif(sys.platform != "linux", reason="constraints.txt was written on Linux")
def test_constraints_pin_what_is_installed():
    """Fails after a requirements change or upgrade until `make lock` rewrites constraints.txt."""
    roots = install.requirement_names(install.REQUIREMENTS, install.TEST_REQUIREMENTS)
    lock = set(install.lock_lines(roots + ["setuptools"]))
    pinned = {line for line in Path(install.CONSTRAINTS).read_text().splitlines()
              if line and not line.startswith("#")}
    assert lock == pinned, f"run `make lock`: missing {lock - pinned}, stale {pinned - lock}"
    assert not any(line.startswith(("torch==", "triton==", "nvidia-cu")) for line in pinned)
