"""The apps that ship with stepbus: the demo (a tiny regression) and the image field (the reference app), with
their YAML configs under ``configs/``."""
