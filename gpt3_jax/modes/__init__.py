"""The `--mode`s of `python -m gpt3_jax.main`, one small module each: train, plan, sample, score."""
