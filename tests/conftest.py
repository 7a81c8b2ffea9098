"""Test fixtures come from plugins, one per part of the lab, so each part keeps its own file."""

pytest_plugins = ["tests.fixtures.lab", "tests.fixtures.broker"]
