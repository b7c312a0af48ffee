"""``python -m tinyllm.cli``: the ``tinyllm`` command."""

import sys

from . import command

sys.exit(command())
