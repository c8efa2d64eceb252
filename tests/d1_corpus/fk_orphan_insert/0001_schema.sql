CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE posts (
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  title TEXT NOT NULL
);
INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'bob');
INSERT INTO posts (id, user_id, title) VALUES (1, 1, 'hello'), (2, 1, 'again'), (3, 2, 'hi');
