"""The queue sweep's cost log: one row per sitting, rewritten while it waits, summed by the
report."""
import subprocess

import pytest

from nmt.errors import UserError
from nmtlab import dvcrun, sweeplog
from nmtlab.hypotheses import queue


def stat_file(path, busy_ticks: int, idle_ticks: int = 1000):
    """A /proc/stat whose busy time is user = busy_ticks (nice, system, irq... 0)."""
    path.write_text(f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\n")
    return path


def test_busy_cpu_seconds_counts_everything_but_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 5000 70 4 6 10 0 0\n")
    ticks = sweeplog.os.sysconf("SC_CLK_TCK")
    assert sweeplog.busy_cpu_seconds(stat) == pytest.approx((100 + 20 + 30 + 4 + 6 + 10) / ticks)
    assert sweeplog.busy_cpu_seconds(tmp_path / "absent") is None


def test_a_sitting_is_appended_after_earlier_ones_and_rewritten(tmp_path, monkeypatch):
    log, stat = tmp_path / "sweep_log.tsv", stat_file(tmp_path / "stat", 0)
    old = sweeplog.Sitting("2026-01-01T10:00:00Z", "2026-01-01T12:30:00Z", 2, 1, 2, 20, 17000.0)
    sweeplog.write([old], log)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rec = sweeplog.Recorder(2, log, stat)
    rec.begin()
    assert [s.done for s in sweeplog.read(log)] == [20, 0]
    ticks = sweeplog.os.sysconf("SC_CLK_TCK")
    stat_file(stat, 360 * ticks)
    rec.tick(3)  # within EVERY seconds of the last write: not written
    assert sweeplog.read(log)[-1].done == 0
    rec.tick(3, force=True)
    rows = sweeplog.read(log)
    assert rows[0] == old
    assert (rows[1].jobs, rows[1].threads, rows[1].done) == (2, 1, 3)
    assert rows[1].cpu_seconds == pytest.approx(360)


def test_summary_sums_the_sittings(tmp_path):
    rows = [sweeplog.Sitting("2026-01-01T10:00:00Z", "2026-01-01T12:30:00Z", 2, 1, 2, 20, 17000.0),
            sweeplog.Sitting("2026-01-02T09:00:00Z", "2026-01-02T10:00:00Z", 2, 1, 2, 9, 7000.0)]
    text = sweeplog.summary(rows)
    assert "2 sitting(s), 3.50 hours of wall time" in text
    assert "6.67 CPU-hours" in text and "29 experiments" in text
    rows[1].cpu_seconds = None
    assert "CPU time not measured in every sitting" in sweeplog.summary(rows)
    assert sweeplog.summary([]) == ""


def test_a_broken_log_is_one_error_naming_it(tmp_path):
    log = tmp_path / "sweep_log.tsv"
    log.write_text("started\tlast_seen\tjobs\tthreads\tcores\tdone\tcpu_seconds\n"
                   "x\ty\ttwo\t1\t2\t0\t\n")
    with pytest.raises(UserError, match="sweep_log.tsv: not a sweep log"):
        sweeplog.read(log)


def test_run_queue_logs_its_sitting(tmp_path, monkeypatch):
    """`nmtlab hypotheses start -j 2` writes the sitting's row and its finished count."""
    states = iter([{"a": ("x-s1", "queued"), "b": ("x-s2", "queued")},
                   {"a": ("x-s1", "running"), "b": ("x-s2", "running")},
                   {"a": ("x-s1", "success"), "b": ("x-s2", "running")},
                   {"a": ("x-s1", "success"), "b": ("x-s2", "success")}])
    monkeypatch.setattr(queue, "_tasks", lambda repo: next(states))
    started = []
    monkeypatch.setattr(dvcrun, "start_workers", lambda jobs, repo: started.append(jobs))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    queue.run_queue(jobs=2, poll=0.0, repo=tmp_path)
    assert started == [2]
    (row,) = sweeplog.read(tmp_path / sweeplog.LOG)
    assert (row.jobs, row.threads, row.done) == (2, 1, 2)


def test_a_sweeps_rounds_are_logged_per_code_version(tmp_path):
    path = tmp_path / "sweep_rounds.tsv"
    assert sweeplog.sequential_codes(path) == set()
    sweeplog.add_round("abc", {"baseline": 2, "gelu": 2}, 4, path)
    sweeplog.add_round("abc", {"baseline": 4, "gelu": 4}, 4, path)
    sweeplog.add_round("def", {"baseline": 2}, 2, path)
    rows = sweeplog.read_rounds(path)
    assert [(r["code"], r["round"], r["seeds"]) for r in rows] == [
        ("abc", "1", "baseline=2 gelu=2"), ("abc", "2", "baseline=4 gelu=4"),
        ("def", "1", "baseline=2")]
    assert sweeplog.sequential_codes(path) == {"abc", "def"}
    path.write_text("code\tround\n")
    with pytest.raises(UserError, match="sweep_rounds.tsv: not a rounds log"):
        sweeplog.read_rounds(path)


def test_the_report_states_the_sweeps_cost():
    from nmtlab.report import markdown
    rows = [sweeplog.Sitting("2026-01-01T10:00:00Z", "2026-01-01T12:30:00Z", 2, 1, 2, 20, 17000.0)]
    md = markdown.render([], [], 0, [], sweeplog.summary(rows))
    assert "**Cost of the sweep.** The queue sweep ran in 1 sitting(s), 2.50 hours" in md
    assert "Cost of the sweep" not in markdown.render([], [], 0, [])


def test_reading_dvc_tries_a_failed_call_again(monkeypatch, tmp_path):
    """One failed `dvc exp show` must not end a sweep's wait; three in a row do."""
    ok = subprocess.CompletedProcess([], 0, '[{"rev": "workspace"}]', "")
    bad = subprocess.CompletedProcess([], 255, "", "ERROR: unexpected error\n"
                                      "Having any troubles? Hit us up\n")
    answers = [bad, ok]
    monkeypatch.setattr(dvcrun, "run", lambda args, repo: answers.pop(0))
    assert dvcrun.exp_show(tmp_path, pause=0.0) == [{"rev": "workspace"}]
    answers[:] = [bad, bad, bad]
    with pytest.raises(UserError, match="dvc exp show --json --all-commits failed 3 times: "
                                        "Having any troubles"):
        dvcrun.exp_show(tmp_path, pause=0.0)
