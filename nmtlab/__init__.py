"""Tools around the pipeline: report, hypotheses, bench, loss check, translate; one CLI (nmtlab)."""
