"""The experiment layer: managing runs (rename, tags, notes, archive, delete), and sweeps."""
