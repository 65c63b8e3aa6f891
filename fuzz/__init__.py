"""Fuzz harnesses (one module per parser, `harness_<name>.py`) and their atheris runner (`run.py`)."""
