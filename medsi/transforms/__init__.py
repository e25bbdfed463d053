"""MONAI-style transforms of medsi, one sub-package per concern (functional, array, dictionary)."""
