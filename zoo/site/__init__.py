"""The documentation site (``make docs``): a gallery card, a page and an API page per
registered model, every tutorial rendered from its stored outputs, the user guides in
``docs/``, and the results and performance tables, assembled from the repository alone and
built by MkDocs (Material theme, mkdocs-jupyter, mkdocstrings)."""
