-- Delivered output is paid for (issue 11, item 1; SPEC "Delivered output is paid for").
--
-- A failed or cancelled job used to be refunded in full, even after its output had streamed to
-- the user. Now the refund decision weighs how much output was delivered: a client can read
-- every delta written to the job's event stream, so the worker records the characters written
-- (`cs_record_delivered`) BEFORE the write that takes them past the threshold, then again as
-- more is written. The decision (`cs__refund`) runs once, in the transaction that makes the
-- job terminal, under the job's row lock:
--   - delivered * 100 <= p_max_pct * typical: a full refund (coins, or the day's free use);
--     ledger reason `refund`, amount = cost;
--   - above it: nothing back; ledger reason `no_refund_delivered`, amount 0.
-- Both rows carry `delivered_pct`, and at most one of them exists per job.
--
-- Why the worker writes to the job row instead of the cancel reading Redis: cs_cancel and
-- cs_record_delivered both lock the row (`for update`), so they are ordered. If the record
-- commits first, the cancel sees it; if the cancel commits first, the record finds the job
-- terminal and the worker does not write the text. Either way the decision never counts less
-- than a client could read. Reading a counter from Redis in the producer instead would leave a
-- window between that read and the SQL decision in which the worker writes more.

alter table public.cs_jobs
  add column delivered_chars integer not null default 0 check (delivered_chars >= 0),
  add column typical_chars integer check (typical_chars > 0);

alter table public.cs_ledger drop constraint cs_ledger_reason_check;
alter table public.cs_ledger add constraint cs_ledger_reason_check
  check (reason in ('grant', 'debit', 'refund', 'no_refund_delivered'));
alter table public.cs_ledger add column delivered_pct numeric(8, 2);
-- One refund decision per job, whichever rule applied.
create unique index cs_ledger_one_refund_rule on public.cs_ledger (job_id)
  where reason in ('refund', 'no_refund_delivered');

-- The share of the kind's typical output that was delivered, in percent (0 when none was).
create function public.cs__delivered_pct(j public.cs_jobs) returns numeric
language sql immutable as $$
  select case when coalesce(j.typical_chars, 0) > 0
    then round(j.delivered_chars * 100.0 / j.typical_chars, 2) else 0 end
$$;

-- Apply the refund rule to a failed or cancelled job, at most once: the ledger row goes first,
-- so a second call finds it and changes nothing. Returns the rule applied by this call
-- ('refund' or 'no_refund_delivered'), or null when the job was already settled.
drop function public.cs__refund(public.cs_jobs);
create function public.cs__refund(j public.cs_jobs, p_max_pct integer) returns text
language plpgsql as $$
declare
  -- Exact in integers: more than p_max_pct percent of the typical output was delivered.
  v_kept boolean := coalesce(j.typical_chars, 0) > 0
    and j.delivered_chars::bigint * 100 > p_max_pct::bigint * j.typical_chars;
  v_reason text := case when v_kept then 'no_refund_delivered' else 'refund' end;
begin
  insert into public.cs_ledger (user_id, job_id, reason, amount, delivered_pct)
  values (j.user_id, j.id, v_reason, case when v_kept then 0 else j.cost end,
          public.cs__delivered_pct(j))
  on conflict do nothing;
  if not found then
    return null;
  end if;
  if v_kept then
    return v_reason;
  end if;
  if j.tier = 'paid' then
    update public.cs_balances set coins = coins + j.cost, updated_at = now()
    where user_id = j.user_id;
  else
    update public.cs_free_usage set used = greatest(used - 1, 0)
    where user_id = j.user_id and day = (j.created_at at time zone 'utc')::date;
  end if;
  return v_reason;
end
$$;

-- The worker records how much output its attempt has written (or is about to write) to the
-- job's stream. Only the attempt that runs the job may: outcomes recorded, terminal (the job
-- ended meanwhile, e.g. cancelled: write nothing more), stale (another attempt runs it now),
-- not_found. The count only grows: across attempts it is the most any one attempt delivered.
create function public.cs_record_delivered(
  p_job_id uuid, p_attempt integer, p_chars integer, p_typical_chars integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found then
    return jsonb_build_object('outcome', 'not_found');
  end if;
  if j.status in ('succeeded', 'failed', 'cancelled') then
    return jsonb_build_object('outcome', 'terminal', 'status', j.status);
  end if;
  if j.status <> 'running' or j.attempts <> p_attempt then
    return jsonb_build_object('outcome', 'stale');
  end if;
  update public.cs_jobs set delivered_chars = greatest(delivered_chars, p_chars),
    typical_chars = p_typical_chars, updated_at = now()
  where id = p_job_id;
  return jsonb_build_object('outcome', 'recorded');
end
$$;

-- The callers of cs__refund, replaced to pass the rule's threshold. A job that never started
-- delivered nothing, so the threshold does not matter there (100).
create or replace function public.cs_abort_submit(p_job_id uuid, p_error jsonb) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status <> 'queued' or j.enqueued_at is not null or j.attempts > 0 then
    return jsonb_build_object('outcome', 'unchanged');
  end if;
  update public.cs_jobs set status = 'failed', error = p_error, finished_at = now(),
    updated_at = now() where id = p_job_id returning * into j;
  perform public.cs__refund(j, 100);
  delete from public.cs_idempotency where job_id = p_job_id;
  return jsonb_build_object('outcome', 'aborted', 'job', public.cs__job_json(j));
end
$$;

create or replace function public.cs_sweep_unenqueued(p_older_than_seconds integer)
returns jsonb
language plpgsql as $$
declare
  ids jsonb := '[]'::jsonb;
  j public.cs_jobs;
begin
  for j in
    select * from public.cs_jobs
    where status = 'queued' and enqueued_at is null
      and created_at < now() - make_interval(secs => p_older_than_seconds)
    for update skip locked
  loop
    update public.cs_jobs set status = 'failed', finished_at = now(), updated_at = now(),
      error = jsonb_build_object('code', 'unavailable', 'message', 'the job was never queued')
    where id = j.id returning * into j;
    perform public.cs__refund(j, 100);
    ids := ids || to_jsonb(j.id);
  end loop;
  return ids;
end
$$;

-- Finish once: a terminal job never changes again, so a late duplicate cannot overwrite it.
-- failed and cancelled apply the refund rule in the same transaction, after taking in the
-- worker's final count of delivered characters (p_delivered_chars, p_typical_chars; null when
-- the caller ran no attempt, e.g. the failure callback). Returns {changed, job, refund}.
drop function public.cs_finish(uuid, text, jsonb, jsonb);
create function public.cs_finish(
  p_job_id uuid, p_status text, p_result jsonb, p_error jsonb,
  p_delivered_chars integer, p_typical_chars integer, p_max_pct integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
  v_rule text;
begin
  if p_status not in ('succeeded', 'failed', 'cancelled') then
    raise exception 'cs_finish: % is not terminal', p_status using errcode = '22023';
  end if;
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found then
    return jsonb_build_object('changed', false, 'job', null);
  end if;
  if j.status in ('succeeded', 'failed', 'cancelled') then
    return jsonb_build_object('changed', false, 'job', public.cs__job_json(j),
                              'user_id', j.user_id);
  end if;
  update public.cs_jobs set status = p_status,
    result = case when p_status = 'succeeded' then p_result end,
    error = case when p_status = 'succeeded' then null else p_error end,
    delivered_chars = greatest(delivered_chars, coalesce(p_delivered_chars, 0)),
    typical_chars = coalesce(p_typical_chars, typical_chars),
    finished_at = now(), updated_at = now()
  where id = p_job_id returning * into j;
  if p_status <> 'succeeded' then
    v_rule := public.cs__refund(j, p_max_pct);
  end if;
  return jsonb_build_object('changed', true, 'job', public.cs__job_json(j),
                            'user_id', j.user_id, 'refund', v_rule);
end
$$;

-- Apply the refund rule to a failed or cancelled job, at most once. Returns {refunded, rule}:
-- refunded is true when this call gave something back.
drop function public.cs_refund(uuid);
create function public.cs_refund(p_job_id uuid, p_max_pct integer) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
  v_rule text;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status not in ('failed', 'cancelled') then
    return jsonb_build_object('refunded', false, 'rule', null);
  end if;
  v_rule := public.cs__refund(j, p_max_pct);
  return jsonb_build_object('refunded', coalesce(v_rule = 'refund', false), 'rule', v_rule);
end
$$;

-- Cancel the caller's own job and apply the refund rule to what the worker recorded as
-- delivered so far. Outcomes: cancelled (with the rule applied), already_finished, not_found.
drop function public.cs_cancel(uuid, uuid);
create function public.cs_cancel(p_job_id uuid, p_user_id uuid, p_max_pct integer)
returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
  v_rule text;
begin
  select * into j from public.cs_jobs where id = p_job_id and user_id = p_user_id for update;
  if not found then
    return jsonb_build_object('outcome', 'not_found');
  end if;
  if j.status in ('succeeded', 'failed', 'cancelled') then
    return jsonb_build_object('outcome', 'already_finished', 'job', public.cs__job_json(j));
  end if;
  update public.cs_jobs set status = 'cancelled', finished_at = now(), updated_at = now(),
    error = jsonb_build_object('code', 'cancelled', 'message', 'cancelled by the user')
  where id = p_job_id returning * into j;
  v_rule := public.cs__refund(j, p_max_pct);
  return jsonb_build_object('outcome', 'cancelled', 'job', public.cs__job_json(j),
                            'refund', v_rule);
end
$$;

-- Only the service role (the producer and the worker) may call the functions made here.
revoke execute on function
  public.cs__delivered_pct(public.cs_jobs),
  public.cs__refund(public.cs_jobs, integer),
  public.cs_record_delivered(uuid, integer, integer, integer),
  public.cs_finish(uuid, text, jsonb, jsonb, integer, integer, integer),
  public.cs_refund(uuid, integer),
  public.cs_cancel(uuid, uuid, integer)
  from public, anon, authenticated;
grant execute on function
  public.cs__delivered_pct(public.cs_jobs),
  public.cs__refund(public.cs_jobs, integer),
  public.cs_record_delivered(uuid, integer, integer, integer),
  public.cs_finish(uuid, text, jsonb, jsonb, integer, integer, integer),
  public.cs_refund(uuid, integer),
  public.cs_cancel(uuid, uuid, integer)
  to service_role;
