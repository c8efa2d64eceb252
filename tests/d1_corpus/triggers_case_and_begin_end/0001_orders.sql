CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, size TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, order_id INTEGER, note TEXT);
CREATE TRIGGER orders_size AFTER INSERT ON orders
BEGIN
  UPDATE orders SET size = CASE
    WHEN NEW.amount >= 100 THEN 'large'
    WHEN NEW.amount >= 10 THEN 'medium'
    ELSE 'small'
  END
  WHERE id = NEW.id;
  INSERT INTO audit (order_id, note) VALUES (NEW.id, 'sized; logged');
END;
CREATE TRIGGER orders_keep_large BEFORE DELETE ON orders
WHEN OLD.amount > 1000
BEGIN
  SELECT RAISE(ABORT, 'large orders are kept');
END;
INSERT INTO orders (id, amount) VALUES (1, 5), (2, 50), (3, 500), (4, 5000);
