DELETE FROM orders WHERE amount < 100;
