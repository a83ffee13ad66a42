"""Configuration: typed parameters, the YAML schema and its validation, the name registry, the builder that turns
a config into a trainer, and the errors that name the file and key at fault."""
