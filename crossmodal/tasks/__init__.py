"""Tasks built on the engine: teach (supervised classifier), distill, probe."""
