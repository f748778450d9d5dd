"""PostgreSQL access: one module per table group, named SQL statements, small typed functions."""
