"""Files medsi ships: the brain template, the default model bundle and a real example scan."""
