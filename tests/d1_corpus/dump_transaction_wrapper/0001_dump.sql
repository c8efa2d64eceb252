PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
INSERT INTO notes VALUES(1,'first');
INSERT INTO notes VALUES(2,'it''s');
CREATE INDEX idx_notes_body ON notes (body);
COMMIT;
