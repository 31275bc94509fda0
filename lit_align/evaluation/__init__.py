"""Evaluation: verifier scores and accuracy of sampled completions."""
