"""``python -m artclf_core.cli``: the same as the ``artclf`` command."""

import sys

from artclf_core.cli.main import main

sys.exit(main())
