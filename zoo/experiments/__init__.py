"""Headline experiments, one module per model family (the family's name, as in
``zoo/models/``); each registers its models' recipes with :func:`zoo.evidence.recipe`."""
