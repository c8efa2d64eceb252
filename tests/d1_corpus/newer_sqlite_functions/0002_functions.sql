INSERT INTO results (name, value) SELECT 'concat', concat('a', 1, NULL, 2.5);
INSERT INTO results (name, value) SELECT 'concat_ws', concat_ws('-', 'a', NULL, 'b', 3);
INSERT INTO results (name, value) SELECT 'string_agg', string_agg(word, ', ' ORDER BY id) FROM words;
INSERT INTO results (name, value) SELECT 'octet_length', octet_length('grüße');
INSERT INTO results (name, value) SELECT 'unixepoch_subsec', unixepoch('2024-01-02 03:04:05.678', 'subsec');
