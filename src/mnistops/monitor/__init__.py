"""Monitoring: Prometheus metrics, drift detection, prediction log, report, simulator."""
