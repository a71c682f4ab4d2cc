-- Privileges of the project's `cs_` objects, now and for every later migration (issue 11, item 9).
--
-- Supabase's default privileges grant ALL on every new table, sequence and function in `public`
-- to `anon` and `authenticated` (and PostgreSQL grants EXECUTE on new functions to PUBLIC). Our
-- objects must not keep those: the data API would let any signed-in user call a `cs_` function
-- (grant coins, finish jobs) or write a `cs_` table behind row-level security's back.
--
-- 20261129000100 revoked EXECUTE once, from every function in `public`: that also stripped the
-- front end's own functions, and left functions of later migrations executable. From here on:
-- - only `cs_` objects are touched, never anyone else's;
-- - existing `cs_` functions: EXECUTE for service_role only;
-- - existing `cs_` tables and sequences: no writes by anon or authenticated (anon gets nothing;
--   authenticated keeps SELECT, which row-level security limits to the user's own rows);
-- - later `cs_` objects: the same, applied by an event trigger as each is created. ALTER DEFAULT
--   PRIVILEGES cannot do that: it cannot be scoped by name, so it would strip the front end's
--   future functions as well. On Supabase the `postgres` role may create event triggers
--   (supautils; supabase.com/docs/guides/database/postgres/event-triggers).

create function public.cs__seal(p_type text, p_identity text) returns void
language plpgsql as $$
begin
  if p_type = 'function' or p_type = 'procedure' then
    execute format('revoke execute on %s %s from public, anon, authenticated', p_type, p_identity);
    execute format('grant execute on %s %s to service_role', p_type, p_identity);
  elsif p_type = 'table' then
    execute format('revoke all on table %s from anon', p_identity);
    execute format(
      'revoke insert, update, delete, truncate, references, trigger on table %s from authenticated',
      p_identity);
    execute format('grant all on table %s to service_role', p_identity);
  elsif p_type = 'sequence' then
    execute format('revoke all on sequence %s from anon, authenticated', p_identity);
    execute format('grant all on sequence %s to service_role', p_identity);
  end if;
end
$$;

-- Every `cs_` object created from now on is sealed at the end of the statement that creates it.
create function public.cs__seal_new_objects() returns event_trigger
language plpgsql as $$
declare
  obj record;
begin
  for obj in
    select c.object_type, c.object_identity
    from pg_event_trigger_ddl_commands() c
    where c.schema_name = 'public'
      and c.object_type in ('function', 'procedure', 'table', 'sequence')
      and coalesce(
        (select p.proname from pg_proc p where c.classid = 'pg_proc'::regclass and p.oid = c.objid),
        (select r.relname from pg_class r where c.classid = 'pg_class'::regclass and r.oid = c.objid)
      ) like 'cs\_%'
  loop
    perform public.cs__seal(obj.object_type, obj.object_identity);
  end loop;
end
$$;

create event trigger cs_seal_new_objects on ddl_command_end
  when tag in ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE TABLE', 'CREATE TABLE AS',
               'SELECT INTO', 'CREATE SEQUENCE')
  execute function public.cs__seal_new_objects();

-- The `cs_` objects that exist now (this migration's functions included).
do $$
declare
  obj record;
begin
  for obj in
    select case p.prokind when 'p' then 'procedure' else 'function' end as kind,
           p.oid::regprocedure::text as identity
    from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname like 'cs\_%'
      and p.prokind in ('f', 'p')
    union all
    select case r.relkind when 'S' then 'sequence' else 'table' end,
           r.oid::regclass::text
    from pg_class r
    where r.relnamespace = 'public'::regnamespace and r.relname like 'cs\_%'
      and r.relkind in ('r', 'p', 'S')
  loop
    perform public.cs__seal(obj.kind, obj.identity);
  end loop;
end
$$;
