"""Storage: the SQLite schema and its migrations, the recorder thread, the rollups, and the
reports and maintenance operations that read or rewrite usage rows."""
