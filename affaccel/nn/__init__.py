"""affaccel.nn."""
