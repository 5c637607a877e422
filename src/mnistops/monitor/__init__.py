"""Monitoring, in the serving process and its monitor process: metrics, drift detection,
the prediction log, feedback."""
