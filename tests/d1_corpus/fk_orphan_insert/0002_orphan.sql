INSERT INTO posts (id, user_id, title) VALUES (4, 99, 'nobody wrote this');
