"""Evaluation of edited and steered models: metrics, not methods."""
