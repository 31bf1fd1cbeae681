"""The SQL store: one layer of SQLAlchemy Core over SQLite and PostgreSQL."""
