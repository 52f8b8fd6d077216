"""Triton kernels, installed as affaccel.kernels. Imported only by affaccel.ops on demand."""
