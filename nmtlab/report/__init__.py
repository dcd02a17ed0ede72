"""The hypothesis report (`nmtlab report`, `python -m nmtlab.report`): reports/experiments.md.

experiments.py reads DVC experiments and the committed run records (with each run's
provenance); compare.py groups the runs into arms, matches them to catalogue entries and
compares each, seed by seed, with its reference through significance.py and the decision
rule of sequential.py; calibration.py measures those tests on simulated A/A comparisons
built from the baseline's runs; markdown.py and figures.py write the report; __main__.py
runs them in that order.
"""
