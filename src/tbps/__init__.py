"""tbps: text-based person search."""
