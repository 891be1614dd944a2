"""Database layer: schema (models), engine and sessions, migrations, queries."""
