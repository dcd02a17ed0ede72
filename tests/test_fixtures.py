"""The test corpus needs nothing outside the repository: no test skips for want of the
Multi30k mirror, and the end-to-end projects are built from tests/fixtures/multi30k."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import e2e

TESTS = Path(__file__).resolve().parent
# A skip (mark or call) whose condition or reason is the mirror: the way 44 tests once went
# missing from a green run on a clone without ../shared.
MIRROR_SKIP = re.compile(r"skip(if)?\((?:[^()]|\([^()]*\))*(MIRROR|[Mm]irror|multi30k)")


def test_no_test_skips_for_want_of_the_multi30k_mirror():
    offenders = [f"{path.name}:{text[:m.start()].count(chr(10)) + 1}"
                 for path in sorted(TESTS.glob("*.py"))
                 for text in [path.read_text(encoding="utf-8")]
                 for m in MIRROR_SKIP.finditer(text)]
    assert offenders == [], "tests that skip without the mirror (use e2e.make_project or " \
                            f"conftest's fake_multi30k_mirror): {offenders}"


def test_the_fixture_is_the_head_of_multi30k():
    counts = {f.name: len(f.read_text(encoding="utf-8").splitlines())
              for f in e2e.MULTI30K_FIXTURE.iterdir() if not f.name.endswith(".md")}
    assert counts == {"train.de": 800, "train.en": 800, "val.de": 60, "val.en": 60,
                      "test.de": 60, "test.en": 60}
    first = (e2e.MULTI30K_FIXTURE / "test.en").read_text(encoding="utf-8").splitlines()[0]
    assert first == "A man in an orange hat starring at something."


@pytest.mark.e2e
def test_tiny_project_needs_no_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e, "MIRROR", tmp_path / "no-mirror")
    monkeypatch.setenv("NMT_DATA_MIRROR", str(tmp_path / "no-mirror"))
    project = e2e.make_project(tmp_path / "proj", n_train=800)
    lines = (project / "corpus/train.de").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 800 and lines[0].startswith("Zwei junge weiße Männer")
    assert len((project / "corpus/test.en").read_text(encoding="utf-8").splitlines()) == 60


@pytest.mark.parametrize("ci, expected", [("true", "1 failed, 1 passed"),
                                          ("", "1 passed, 1 skipped")])
def test_under_ci_a_skip_is_a_failure(tmp_path, ci, expected):
    test_file = tmp_path / "test_skips.py"
    test_file.write_text("import pytest\n\ndef test_skips():\n    pytest.skip('no tool')\n\n"
                         "def test_runs():\n    pass\n")
    env = dict(os.environ, CI=ci)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", str(test_file)], cwd=e2e.REPO, env=env,
                          capture_output=True, text=True)
    assert expected in proc.stdout, proc.stdout[-2000:]


def test_tests_running_real_stages_on_a_built_project_are_marked_e2e():
    """make test-fast (-m "not e2e") leaves out the bad-input table (it builds a project with
    all seven stages), the determinism runs and the tests of the real Multi30k."""
    slow = ["tests/test_bad_input.py", "tests/test_determinism.py",
            "tests/test_corpus.py::test_the_real_multi30k_matches_its_pinned_checksums",
            "tests/test_prepare.py::test_prepare_and_subsample_multi30k_en_de"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not e2e",
                           *slow], cwd=e2e.REPO, capture_output=True, text=True)
    assert re.search(r"no tests collected \(\d+ deselected\)", proc.stdout), proc.stdout[-2000:]
