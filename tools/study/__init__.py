"""One-command reproduction of the study's comparison (see ``plan.py`` for the stages)."""
