"""The API the operator serves: the typed spec, its names and literals, conditions (pure)."""
