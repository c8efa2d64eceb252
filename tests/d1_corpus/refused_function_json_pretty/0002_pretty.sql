INSERT INTO meta (key, value) SELECT 'pretty', json_pretty('{"a":[1,2]}');
