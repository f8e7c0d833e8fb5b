"""A benchmark that runs bbmq side by side with RabbitMQ, NATS, Redis and beanstalkd.

One workload, several systems, one run (see issue 8): ``python -m bench``.
``bench.runner`` is the command line, ``bench.phases`` the workload,
``bench.systems`` one adapter per system, ``bench.scale`` bbmq's own scale
figures, ``bench.profile`` the py-spy summary, ``bench.report`` the output.
"""
