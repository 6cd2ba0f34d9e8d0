"""Measuring the recipe: a held-out split (``split``), a train/eval overlap check (``contamination``) and ``postvl
eval`` (``stage``, ``metrics``, ``main``)."""
