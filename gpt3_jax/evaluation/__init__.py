"""Evaluation like the paper (zero-, one- and few-shot tasks, perplexity): see docs/evaluation.md."""
