INSERT INTO users (name, score) VALUES ('cy', 7), ('dee', '8');
