#!/usr/bin/env python3
"""Publish to a bbmq topic: ``python producer.py TOPIC [MESSAGE ...]``.

Without messages, each line typed (or piped) on stdin is published; the id the
broker assigned is printed for each.  Same as ``bbmq publish``; see ``--help``.
"""

import sys

from bbmq.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("publish", "producer.py"))
