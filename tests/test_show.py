"""nmtlab show: the experiments table with the columns a researcher compares."""
from __future__ import annotations

import re

import pytest

from nmtlab import show

from . import e2e

MAX_WIDTH = 160


def shown(columns: list[str]) -> list[str]:
    """The columns DVC keeps, applying --keep and --drop the way `dvc exp show` does."""
    keep, drop = re.compile(show.keep_pattern()), re.compile(show.drop_pattern())
    return [c for c in columns if keep.match(c) or not drop.match(c)]


def test_patterns_keep_params_and_compared_metrics_and_drop_hashes_and_signatures():
    columns = ["Experiment", "State", "seed", "model.d_model", "data.files.train_src",
               "train.epochs", "epochs", "best_val_loss", "final_val_loss", "stopped_by",
               "train_minutes", "tokens_per_s", "peak_memory_mb", "test.bleu", "test.chrf",
               "data/train/metrics.json:epochs", "wall_seconds", "device", "cpu_hours", "val.bleu",
               "test.bleu_signature", "test.sentences", "corpus", "data/prepared",
               "nmt/model.py", "stages/train.py", "Created"]
    assert shown(columns) == [
        "Experiment", "State", "seed", "model.d_model", "data.files.train_src", "train.epochs",
        "epochs", "best_val_loss", "stopped_by", "train_minutes",
        "tokens_per_s", "peak_memory_mb", "test.bleu", "test.chrf",
        "data/train/metrics.json:epochs"]


def test_compared_metrics_come_right_after_the_experiment_bleu_first():
    columns = ["Experiment", "rev", "typ", "Created", "parent", "epochs", "best_val_loss",
               "stopped_by", "train_minutes", "tokens_per_s", "peak_memory_mb", "test.bleu",
               "test.chrf", "translate.beam_size", "nmt/model.py"]
    assert show.column_order(columns) == [
        "Experiment", "rev", "typ", "Created", "parent", "test.bleu", "test.chrf",
        "best_val_loss", "epochs", "stopped_by", "train_minutes", "tokens_per_s",
        "peak_memory_mb", "translate.beam_size", "nmt/model.py"]
    # A `file:` prefix (two metrics files sharing a name) keeps the column in its place.
    assert show.column_order(["Experiment", "data/train/metrics.json:epochs",
                              "data/bleu/metrics.json:test.bleu"]) == [
        "Experiment", "data/bleu/metrics.json:test.bleu", "data/train/metrics.json:epochs"]


def test_print_gives_the_dvc_command(capsys):
    show.main(["--print", "--md"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("dvc exp show --no-pager --only-changed --drop '^(?!(seed|data|")
    assert line.endswith(" --md")


def table_of(project, *args: str) -> str:
    return e2e.run([str(e2e.VENV_BIN / "python"), "-m", "nmtlab", "show", *args], project).stdout


def widest(table: str) -> int:
    return max(map(len, table.splitlines()))


def md_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.e2e
def test_table_after_the_default_run_and_one_experiment_fits_160_columns(tmp_path, monkeypatch):
    # As `make repro` in a fresh clone: one dvc repro, nothing committed yet.
    project = e2e.make_project(tmp_path / "proj")
    e2e.dvc("repro", cwd=project)
    # An 80-column terminal (and a log: rich's default width) folds the table, but not BLEU.
    monkeypatch.setenv("COLUMNS", "80")
    header = table_of(project).splitlines()[1].split()
    assert header[:3] == ["Experiment", "test.bleu", "test.chrf"], header
    monkeypatch.setenv("COLUMNS", "1000")  # rich would fold the table to the terminal's width
    table = table_of(project)
    assert widest(table) <= MAX_WIDTH, f"{widest(table)} columns:\n{table}"
    for column in show.COMPARED:
        assert column in table, table

    e2e.dvc("exp", "run", "-n", "beam1", "-S", "translate.beam_size=1", cwd=project)
    table = table_of(project)
    assert widest(table) <= MAX_WIDTH and "translate.beam_size" in table, \
        f"{widest(table)} columns:\n{table}"
    md = table_of(project, "--md")
    rows = md_rows(md)
    assert len(rows) == 5, md  # header, rule, workspace, main, beam1
    assert len({row.count("|") for row in rows}) == 1, md
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert "translate.beam_size" in header and "model.d_model" not in header
    assert not any("/" in cell for cell in header), "a dependency hash column is left"
