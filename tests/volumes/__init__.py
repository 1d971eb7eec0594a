"""Tests of volume reading and the demo dataset."""
