"""What every benchmark shares, so that a new benchmark is a page of its own case:

* ``servers``  -- PostgreSQL and Redis (embedded unless given), the commit measured, clean stops;
* ``workers``  -- ``notifier worker`` (or any) processes started, awaited and stopped;
* ``receiver`` -- a webhook receiver in its own process that verifies and counts every message;
* ``cpu``      -- where the CPU went (per process, from /proc) and how busy the machine was;
* ``measure``  -- bounded polling, repeated runs (median), figures against a baseline.
"""
