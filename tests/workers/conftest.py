"""Fixtures shared by the worker tests: the scripted-provider environment."""

from tests.workers.test_delivery_layer import env  # noqa: F401 - re-exported as a fixture
