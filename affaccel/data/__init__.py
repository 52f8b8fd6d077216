"""affaccel.data."""
