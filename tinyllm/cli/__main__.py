"""``python -m tinyllm.cli``: the ``tinyllm`` command."""

import sys

from . import main

sys.exit(main())
