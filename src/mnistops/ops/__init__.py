"""Offline tools that read what monitoring recorded: the drift report, the traffic
simulator, retraining on drift, and their commands."""
