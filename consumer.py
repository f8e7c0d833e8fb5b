#!/usr/bin/env python3
"""Consume a bbmq topic: ``python consumer.py TOPIC [--group G]``.

Prints each message as it arrives and acknowledges it.  Same as
``bbmq consume``; see ``--help``.
"""

import sys

from bbmq.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("consume", "consumer.py"))
