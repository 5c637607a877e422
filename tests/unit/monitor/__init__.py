"""Unit tests of monitoring: in process, no training, no subprocess, no network."""
