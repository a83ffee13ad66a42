"""Configuration: typed parameters, the YAML schema and its validation, the name registry, the builder that turns
a config into a trainer, where its callbacks may write (``output_paths``), the preflight that runs every check of
``train`` with nothing written (``preflight``), and the errors that name the file and key at fault."""
