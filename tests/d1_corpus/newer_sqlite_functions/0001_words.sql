CREATE TABLE words (id INTEGER PRIMARY KEY, word TEXT);
INSERT INTO words VALUES (1, 'grüße'), (2, 'd1'), (3, NULL);
CREATE TABLE results (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value);
