"""The seven DVC stages, one thin entry module each (python -m stages.<name>); dvc.yaml is the map."""
