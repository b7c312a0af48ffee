"""Makes plain ``pytest exercises/`` grade, the same as ``tinyllm grade exercises``."""

pytest_plugins = ["tinyllm.grading.plugin"]
