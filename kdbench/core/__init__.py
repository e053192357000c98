"""The bottom layer: run specs, the record store, registries, errors, plugins; imports no other
kdbench layer."""
