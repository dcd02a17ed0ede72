"""The lab report's hypotheses as DVC experiments, from the catalogue hypotheses.yaml.

catalogue.py reads and checks the catalogue and writes each entry's `dvc exp run` line;
queue.py queues entries (with training seeds), runs the queue and waits for it, from
DVC's JSON output; sweep.py runs the catalogue in rounds, seeds only where the decision
rule needs them; __main__.py is the command line (`nmtlab hypotheses`).
"""
