"""The zoo's models: one module, or one package, per paper model.

Nothing here lists them: :func:`zoo.registry.discover` imports every module of this package,
and each registers its models with :func:`zoo.registry.register`. A module (its *family*)
may register variants, whose keys start with the family's name (``collapse`` registers
``collapse_cvae`` and ``collapse_hvae``).
"""
