CREATE TABLE snippets (id INTEGER PRIMARY KEY, "body;text" TEXT, note TEXT DEFAULT 'a -- b; /* c */');
INSERT INTO snippets (id, "body;text") VALUES (1, 'x -- not a comment');
INSERT INTO snippets (id, "body;text") VALUES (2, 'y /* not a comment */ z');
INSERT INTO snippets (id, "body;text", note) VALUES (3, 'semi; colon', 'it''s; fine');
INSERT INTO snippets (id, "body;text") VALUES (4, '/* never closed');
INSERT INTO snippets (id, "body;text") VALUES (5, '-- at the end');
