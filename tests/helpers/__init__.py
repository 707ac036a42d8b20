"""Test helpers shared by the test suite and the demo (tiny models, datasets)."""
