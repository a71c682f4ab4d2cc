-- CareerShaper Jobs: durable jobs, coins and the coin ledger.
-- Every store operation is one SQL function below; both store adapters (psycopg and supabase-py
-- rpc) call these and nothing else. Each function is one transaction, so every state transition
-- is atomic and there is no read-modify-write in Python.

create table public.cs_jobs (
  id uuid primary key,
  seq bigint generated always as identity unique,
  user_id uuid not null,
  kind text not null,
  tier text not null check (tier in ('free', 'paid')),
  status text not null default 'queued'
    check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  cost integer not null check (cost >= 0),
  input jsonb not null,
  attempts integer not null default 0,
  result jsonb,
  error jsonb,
  created_at timestamptz not null default now(),
  enqueued_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  -- A terminal job has its finish time, and only a succeeded job has a result.
  check ((status in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null)),
  check ((status = 'succeeded') = (result is not null))
);
create index cs_jobs_user_seq on public.cs_jobs (user_id, seq desc);
create index cs_jobs_unenqueued on public.cs_jobs (created_at)
  where status = 'queued' and enqueued_at is null;

create table public.cs_balances (
  user_id uuid primary key,
  coins integer not null check (coins >= 0),
  updated_at timestamptz not null default now()
);

-- Append-only: one row per coin movement. Unique per (job, reason), so a debit and a refund each
-- happen at most once per job, and the initial grant once per user.
create table public.cs_ledger (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  job_id uuid,
  reason text not null check (reason in ('grant', 'debit', 'refund')),
  amount integer not null,
  created_at timestamptz not null default now()
);
create unique index cs_ledger_once_per_job on public.cs_ledger (job_id, reason)
  where job_id is not null;
create unique index cs_ledger_one_grant on public.cs_ledger (user_id) where reason = 'grant';

create function public.cs__ledger_is_append_only() returns trigger
language plpgsql as $$
begin
  raise exception 'cs_ledger is append-only' using errcode = 'P0001';
end
$$;
create trigger cs_ledger_append_only before update or delete on public.cs_ledger
  for each row execute function public.cs__ledger_is_append_only();

create table public.cs_free_usage (
  user_id uuid not null,
  day date not null,
  used integer not null default 0 check (used >= 0),
  primary key (user_id, day)
);

create table public.cs_idempotency (
  user_id uuid not null,
  key text not null,
  request_hash text not null,
  job_id uuid not null,
  created_at timestamptz not null default now(),
  primary key (user_id, key)
);

-- Row level security: a signed-in user reads only their own rows from the front end. Writes go
-- through the functions below, which only the service role may execute.
alter table public.cs_jobs enable row level security;
alter table public.cs_balances enable row level security;
alter table public.cs_ledger enable row level security;
alter table public.cs_free_usage enable row level security;
alter table public.cs_idempotency enable row level security;
create policy cs_jobs_own on public.cs_jobs for select to authenticated
  using (user_id = auth.uid());
create policy cs_balances_own on public.cs_balances for select to authenticated
  using (user_id = auth.uid());
create policy cs_ledger_own on public.cs_ledger for select to authenticated
  using (user_id = auth.uid());
create policy cs_free_usage_own on public.cs_free_usage for select to authenticated
  using (user_id = auth.uid());
grant select on public.cs_jobs, public.cs_balances, public.cs_ledger, public.cs_free_usage
  to authenticated;
grant all on all tables in schema public to service_role;
