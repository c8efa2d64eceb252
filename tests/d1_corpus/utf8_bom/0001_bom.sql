CREATE TABLE greetings (id INTEGER PRIMARY KEY, text TEXT);
INSERT INTO greetings VALUES (1, '안녕하세요');
