create table orders (id integer primary key, amount integer not null, size text);
create trigger orders_size after insert on orders
begin
  update orders set size = case when new.amount >= 100 then 'large' else 'small' end
  where id = new.id;
end;
insert into orders (id, amount) values (1, 5), (2, 500);
