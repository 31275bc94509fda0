"""IFEval checks against their reference (a developer tool): ``python -m tools.ifeval.punkt_agreement``."""
