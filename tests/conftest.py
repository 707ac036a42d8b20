"""Shared pytest setup. Fixture plugins are listed here so every test directory sees them."""

pytest_plugins = ["tests.fixtures.sshd"]
