"""affaccel.ops."""
