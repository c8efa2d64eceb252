begin transaction;
insert into a values (2);
commit;
