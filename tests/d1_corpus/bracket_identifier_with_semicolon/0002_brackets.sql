CREATE TABLE [odd;name] (x INTEGER);
INSERT INTO [odd;name] VALUES (1);
