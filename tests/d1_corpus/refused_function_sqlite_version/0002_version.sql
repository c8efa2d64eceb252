INSERT INTO meta (key, value) SELECT 'sqlite', sqlite_version();
