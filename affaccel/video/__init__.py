"""affaccel.video."""
