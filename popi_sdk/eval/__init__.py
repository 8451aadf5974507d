"""Evaluation as in the paper (§5.1): reward accuracy, context overhead and judged win rate of
each personalization method on held-out users. ``popi eval`` runs :func:`runner.evaluate`."""
