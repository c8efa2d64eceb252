"""The names migration 003 and the ledger give things, and the default database file,
defined once (and cheap to import)."""

TABLE = "server_sessions"
INDEX = "idx_server_sessions_expires"
SESSIONS_MIGRATION = "003_server_sessions_d1.sql"
DEFAULT_LEDGER = "d1_migrations"  # wrangler's default migrations_table
# sessionctl's own tables all start with this prefix: bookkeeping, never the bot's schema.
OWN_TABLE_PREFIX = "sessionctl_"
CHECKSUM_TABLE = "sessionctl_migration_checksums"
DEFAULT_DB_FILE = "sessions.db"  # the target when nothing else chooses one
# An import stages its rows in a table of this name plus a run id, then merges them at once.
IMPORT_STAGING_PREFIX = "sessionctl_import_"
# A rollback copies the table into a table of this name plus a run id, backs up the copy,
# and drops the table only if it still equals the copy, every column of every row.
ROLLBACK_COPY_PREFIX = "sessionctl_rollback_"
