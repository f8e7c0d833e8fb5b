"""``python -m bbmq`` is the ``bbmq`` command."""

import sys

from bbmq.cli import main

sys.exit(main())
