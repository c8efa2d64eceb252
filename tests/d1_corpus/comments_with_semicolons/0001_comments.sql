-- a line comment; with a semicolon
/* a block comment; with; semicolons
   over two lines */
CREATE TABLE products ( -- the catalogue; one row per product
  id INTEGER PRIMARY KEY, /* surrogate; key */
  name TEXT NOT NULL -- shown to users; never empty
);
INSERT INTO products (id, name) VALUES (1, 'lamp'); -- trailing; comment
/* between; statements */ INSERT INTO products (id, name) VALUES (2, 'desk');
