"""nmt/plotting.py: curves that can be read (whole-number epoch ticks, shared trainings named)."""
from __future__ import annotations

import matplotlib.pyplot as plt

from nmt.plotting import curves_figure, line_plot, merge_identical

EPOCHS = [1.0, 2.0, 3.0]


def test_runs_with_one_training_are_one_curve_naming_every_run():
    series = {"baseline": (EPOCHS, [3.0, 2.5, 2.2]), "beam1": (EPOCHS, [3.0, 2.5, 2.2]),
              "gelu": (EPOCHS, [2.9, 2.4, 2.1]), "swa2": (EPOCHS, [3.0, 2.5, 2.2])}
    merged = merge_identical(series)
    assert list(merged) == ["baseline, beam1, swa2 (same training)", "gelu"]
    assert merged["gelu"] == series["gelu"]
    assert list(merge_identical(series, "same schedule"))[0].endswith("(same schedule)")


def test_a_curve_differing_in_one_point_stays_its_own():
    series = {"a": (EPOCHS, [3.0, 2.5, 2.2]), "b": (EPOCHS, [3.0, 2.5, 2.2000001])}
    assert merge_identical(series) == series


def test_figure_draws_the_merged_curves_with_their_legend():
    fig = curves_figure({"a": (EPOCHS, [3.0, 2.0, 1.0]), "b": (EPOCHS, [3.0, 2.0, 1.0])},
                        title="Validation loss per epoch", xlabel="epoch", ylabel="loss")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a, b (same training)"]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "Validation loss per epoch", "epoch", "loss")
    plt.close(fig)


def test_epoch_axis_has_whole_number_ticks():
    # Three epochs: matplotlib's default locator would put ticks at 1.25, 1.5, ...
    fig = curves_figure({"run": (EPOCHS, [3.0, 2.0, 1.0])}, title="t", xlabel="epoch",
                        ylabel="loss")
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)


def test_fractional_x_keeps_fractional_ticks():
    fig = curves_figure({"run": ([0.1, 0.2, 0.3], [3.0, 2.0, 1.0])}, title="t", xlabel="x",
                        ylabel="y")
    fig.canvas.draw()
    assert not all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    plt.close(fig)


def test_line_plot_writes_a_png(tmp_path):
    line_plot(tmp_path / "loss.png", {"run": (EPOCHS, [3.0, 2.0, 1.0])}, title="t",
              xlabel="epoch", ylabel="loss")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
