-- written on Windows
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL
);
INSERT INTO customers (id, name) VALUES (1, 'line one
line two');
CREATE TRIGGER customers_upper AFTER INSERT ON customers
BEGIN
  UPDATE customers SET name = upper(name) WHERE id = NEW.id;
END;
INSERT INTO customers (id, name) VALUES (2, 'eve');
