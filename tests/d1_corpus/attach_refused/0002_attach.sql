ATTACH DATABASE 'side.db' AS side;
CREATE TABLE side.b (y INTEGER);
