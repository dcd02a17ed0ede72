"""The hypothesis report (`nmtlab report`, `python -m nmtlab.report`): reports/experiments.md.

experiments.py reads DVC experiments and the committed run records, compare.py pools each
configuration's training seeds and tests it against the baseline with significance.py,
markdown.py and figures.py write the report; __main__.py runs them in that order.
"""
