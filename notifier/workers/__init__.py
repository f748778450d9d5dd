"""The arq worker: fan-out, delivery and reconciliation jobs. Jobs carry ids, reload rows from
PostgreSQL and are safe to run twice; Redis only wakes workers up."""
