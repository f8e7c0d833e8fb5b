"""A broker's membership of a cluster sharing one MySQL/MariaDB database (issue 18).

Transport-level, like the store thread: it may use the core, the store and the
protocol, and the core never imports it.  ``probe`` tells a crashed broker's
port from a live one; ``decisions`` holds every choice as a pure function;
``seat`` hands the member's calls to the core on the event loop; ``member`` is
the thread that registers, renews, acquires, adopts, balances and drains.
"""
