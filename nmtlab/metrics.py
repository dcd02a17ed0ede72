"""The metrics a hypothesis can name (hypotheses.yaml `metric:`), shared by the catalogue
and the report: which way is better, how to print it, and the smallest effect worth knowing
when an entry names none (`min_effect:`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str
    min_effect: float  # default smallest effect worth knowing (docs/seeds.md)


METRICS = {
    "bleu": Metric("bleu", "test BLEU", True, ".2f", 0.5),
    "val_loss": Metric("val_loss", "validation loss (best epoch)", False, ".4f", 0.01),
}
