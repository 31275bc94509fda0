"""Reward sources: reward-model scorers and verifiers."""
