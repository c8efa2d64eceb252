PRAGMA foreign_keys=OFF;
PRAGMA defer_foreign_keys=on;
CREATE TABLE teams (id INTEGER PRIMARY KEY);
CREATE TABLE members (id INTEGER PRIMARY KEY, team_id INTEGER REFERENCES teams (id));
INSERT INTO members VALUES (1, 7);
INSERT INTO teams VALUES (7);
PRAGMA defer_foreign_keys=off;
