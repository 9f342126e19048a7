"""Offline data generators and loaders shared by several models: the 8x8 digits as images
(:mod:`~zoo.datasets.digits`), mini-dSprites, continuous sprites with measurement functions
(:mod:`~zoo.datasets.sprites`), mini-MorphoMNIST, mini-Pendulum, stroke glyphs,
seeded Markov chains (:mod:`~zoo.datasets.markov`) and small standardised tables
(:mod:`~zoo.datasets.tables`: four sklearn tables, a synthetic informative+noise table)
and two-concept RGB blobs of controllable concept signal (:mod:`~zoo.datasets.blobs`).
A generator that only one model uses lives in that model's module or package."""
