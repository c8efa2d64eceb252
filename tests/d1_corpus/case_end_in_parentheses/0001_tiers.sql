CREATE TABLE users (id INTEGER PRIMARY KEY, score INTEGER, tier TEXT);
INSERT INTO users (id, score) VALUES (1, 3), (2, 8);
UPDATE users SET tier = (CASE WHEN score > 5 THEN 'gold' ELSE 'basic' END);
CREATE INDEX idx_users_tier ON users (tier);
