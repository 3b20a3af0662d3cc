"""Hyperparameter sweeps: Optuna studies over gin bindings (docs/sweeps.md)."""
