CREATE TABLE users (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  score REAL,
  avatar BLOB
);
CREATE INDEX idx_users_name ON users (name);
INSERT INTO users (id, name, score, avatar) VALUES (1, 'ada', 9.5, x'00ff'), (2, 'bob', NULL, NULL);
