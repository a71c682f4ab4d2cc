-- One function per store operation. Each returns jsonb with an `outcome` where a caller must
-- branch, so both adapters see identical results.

create function public.cs__job_json(j public.cs_jobs) returns jsonb
language sql immutable as $$
  select jsonb_build_object(
    'id', j.id, 'kind', j.kind, 'tier', j.tier, 'status', j.status, 'cost', j.cost,
    'attempts', j.attempts, 'created_at', j.created_at, 'started_at', j.started_at,
    'finished_at', j.finished_at, 'result', j.result, 'error', j.error)
$$;

create function public.cs__today() returns date
language sql stable as $$ select (now() at time zone 'utc')::date $$;

-- Grant the initial coins once per new user (idempotent).
create function public.cs__ensure_user(p_user_id uuid, p_initial_coins integer) returns void
language plpgsql as $$
begin
  insert into public.cs_balances (user_id, coins) values (p_user_id, p_initial_coins)
  on conflict (user_id) do nothing;
  if found then
    insert into public.cs_ledger (user_id, reason, amount)
    values (p_user_id, 'grant', p_initial_coins)
    on conflict do nothing;
  end if;
end
$$;

-- Give back what a job took, at most once: coins for a paid job, the daily use for a free one.
create function public.cs__refund(j public.cs_jobs) returns boolean
language plpgsql as $$
begin
  insert into public.cs_ledger (user_id, job_id, reason, amount)
  values (j.user_id, j.id, 'refund', j.cost)
  on conflict do nothing;
  if not found then
    return false;
  end if;
  if j.tier = 'paid' then
    update public.cs_balances set coins = coins + j.cost, updated_at = now()
    where user_id = j.user_id;
  else
    update public.cs_free_usage set used = greatest(used - 1, 0)
    where user_id = j.user_id and day = (j.created_at at time zone 'utc')::date;
  end if;
  return true;
end
$$;

-- The idempotency-key lookup shared by prepare and submit: null when the key is new.
create function public.cs__idempotent(p_user_id uuid, p_key text, p_request_hash text)
returns jsonb
language plpgsql as $$
declare
  rec public.cs_idempotency;
  j public.cs_jobs;
begin
  if p_key is null then
    return null;
  end if;
  select * into rec from public.cs_idempotency where user_id = p_user_id and key = p_key;
  if not found then
    return null;
  end if;
  if rec.created_at < now() - interval '24 hours' then
    delete from public.cs_idempotency where user_id = p_user_id and key = p_key;
    return null;
  end if;
  if rec.request_hash <> p_request_hash then
    return jsonb_build_object('outcome', 'idempotency_conflict');
  end if;
  select * into j from public.cs_jobs where id = rec.job_id;
  return jsonb_build_object('outcome', 'existing', 'job', public.cs__job_json(j),
                            'enqueued', j.enqueued_at is not null);
end
$$;

-- Choose the tier without charging: auto picks paid when coins cover the cost, else free when
-- the daily allowance allows, else quota_exhausted. Outcomes: ok (with tier), existing,
-- idempotency_conflict, quota_exhausted.
create function public.cs_prepare_submit(
  p_user_id uuid, p_cost integer, p_tier text, p_idempotency_key text, p_request_hash text,
  p_initial_coins integer, p_free_daily integer
) returns jsonb
language plpgsql as $$
declare
  seen jsonb;
  v_coins integer;
  v_used integer;
begin
  seen := public.cs__idempotent(p_user_id, p_idempotency_key, p_request_hash);
  if seen is not null then
    return seen;
  end if;
  perform public.cs__ensure_user(p_user_id, p_initial_coins);
  select coins into v_coins from public.cs_balances where user_id = p_user_id;
  select coalesce(max(used), 0) into v_used from public.cs_free_usage
  where user_id = p_user_id and day = public.cs__today();
  if p_tier in ('auto', 'paid') and v_coins >= p_cost then
    return jsonb_build_object('outcome', 'ok', 'tier', 'paid');
  end if;
  if p_tier in ('auto', 'free') and v_used < p_free_daily then
    return jsonb_build_object('outcome', 'ok', 'tier', 'free');
  end if;
  return jsonb_build_object('outcome', 'quota_exhausted', 'coins', v_coins,
                            'free_jobs_left_today', greatest(p_free_daily - v_used, 0));
end
$$;

-- Insert the job and charge it, in one transaction. p_tier is 'paid' or 'free' (already chosen
-- by cs_prepare_submit). Outcomes: created, existing, idempotency_conflict, quota_exhausted.
create function public.cs_submit(
  p_job_id uuid, p_user_id uuid, p_kind text, p_tier text, p_cost integer, p_input jsonb,
  p_idempotency_key text, p_request_hash text, p_initial_coins integer, p_free_daily integer
) returns jsonb
language plpgsql as $$
declare
  seen jsonb;
  v_coins integer;
  j public.cs_jobs;
begin
  if p_tier not in ('paid', 'free') then
    raise exception 'cs_submit: tier must be paid or free, not %', p_tier using errcode = '22023';
  end if;
  if p_idempotency_key is not null then
    -- Serialise concurrent submits with the same key.
    perform pg_advisory_xact_lock(hashtextextended(p_user_id::text || ':' || p_idempotency_key, 0));
    seen := public.cs__idempotent(p_user_id, p_idempotency_key, p_request_hash);
    if seen is not null then
      return seen;
    end if;
  end if;
  perform public.cs__ensure_user(p_user_id, p_initial_coins);
  select coins into v_coins from public.cs_balances where user_id = p_user_id for update;
  if p_tier = 'paid' then
    if v_coins < p_cost then
      return jsonb_build_object('outcome', 'quota_exhausted');
    end if;
    update public.cs_balances set coins = coins - p_cost, updated_at = now()
    where user_id = p_user_id;
    insert into public.cs_ledger (user_id, job_id, reason, amount)
    values (p_user_id, p_job_id, 'debit', -p_cost);
  else
    insert into public.cs_free_usage as u (user_id, day, used)
    values (p_user_id, public.cs__today(), 1)
    on conflict (user_id, day) do update set used = u.used + 1
    where u.used < p_free_daily;
    if not found then
      return jsonb_build_object('outcome', 'quota_exhausted');
    end if;
  end if;
  insert into public.cs_jobs (id, user_id, kind, tier, cost, input)
  values (p_job_id, p_user_id, p_kind, p_tier,
          case when p_tier = 'paid' then p_cost else 0 end, p_input)
  returning * into j;
  if p_idempotency_key is not null then
    insert into public.cs_idempotency (user_id, key, request_hash, job_id)
    values (p_user_id, p_idempotency_key, p_request_hash, p_job_id);
  end if;
  return jsonb_build_object('outcome', 'created', 'job', public.cs__job_json(j));
end
$$;

-- The broker accepted the message: from now on the job is the broker's to deliver.
create function public.cs_mark_enqueued(p_job_id uuid) returns void
language sql as $$
  update public.cs_jobs set enqueued_at = coalesce(enqueued_at, now()), updated_at = now()
  where id = p_job_id
$$;

-- The broker refused or could not be reached: fail the never-enqueued job, refund it, and free
-- its idempotency key so the client's retry with the same key submits afresh.
create function public.cs_abort_submit(p_job_id uuid, p_error jsonb) returns jsonb
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
  perform public.cs__refund(j);
  delete from public.cs_idempotency where job_id = p_job_id;
  return jsonb_build_object('outcome', 'aborted', 'job', public.cs__job_json(j));
end
$$;

-- A delivery begins an attempt. Outcomes: started (with user_id and input), terminal, not_found.
create function public.cs_start_attempt(p_job_id uuid) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found then
    return jsonb_build_object('outcome', 'not_found');
  end if;
  if j.status in ('succeeded', 'failed', 'cancelled') then
    return jsonb_build_object('outcome', 'terminal', 'job', public.cs__job_json(j),
                              'user_id', j.user_id);
  end if;
  update public.cs_jobs set status = 'running', attempts = attempts + 1,
    started_at = coalesce(started_at, now()), enqueued_at = coalesce(enqueued_at, now()),
    updated_at = now()
  where id = p_job_id returning * into j;
  return jsonb_build_object('outcome', 'started', 'job', public.cs__job_json(j),
                            'user_id', j.user_id, 'input', j.input);
end
$$;

-- Finish once: a terminal job never changes again, so a late duplicate cannot overwrite it.
-- failed and cancelled refund in the same transaction. Returns {changed, job}.
create function public.cs_finish(p_job_id uuid, p_status text, p_result jsonb, p_error jsonb)
returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
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
    finished_at = now(), updated_at = now()
  where id = p_job_id returning * into j;
  if p_status <> 'succeeded' then
    perform public.cs__refund(j);
  end if;
  return jsonb_build_object('changed', true, 'job', public.cs__job_json(j),
                            'user_id', j.user_id);
end
$$;

-- Refund a failed or cancelled job, at most once. Returns {refunded}.
create function public.cs_refund(p_job_id uuid) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status not in ('failed', 'cancelled') then
    return jsonb_build_object('refunded', false);
  end if;
  return jsonb_build_object('refunded', public.cs__refund(j));
end
$$;

-- Cancel the caller's own job. Outcomes: cancelled, already_finished, not_found.
create function public.cs_cancel(p_job_id uuid, p_user_id uuid) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
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
  perform public.cs__refund(j);
  return jsonb_build_object('outcome', 'cancelled', 'job', public.cs__job_json(j));
end
$$;

create function public.cs_get_job(p_job_id uuid, p_user_id uuid) returns jsonb
language sql stable as $$
  select public.cs__job_json(j) from public.cs_jobs j where id = p_job_id and user_id = p_user_id
$$;

-- The caller's jobs, newest first; p_before is the id of the last job of the previous page.
create function public.cs_list_jobs(p_user_id uuid, p_limit integer, p_before uuid)
returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(public.cs__job_json(j) order by j.seq desc), '[]'::jsonb)
  from (
    select * from public.cs_jobs
    where user_id = p_user_id
      and (p_before is null or seq < coalesce(
        (select seq from public.cs_jobs where id = p_before and user_id = p_user_id), 0))
    order by seq desc
    limit least(greatest(p_limit, 1), 100)
  ) j
$$;

create function public.cs_me(p_user_id uuid, p_initial_coins integer, p_free_daily integer)
returns jsonb
language plpgsql as $$
declare
  v_coins integer;
  v_used integer;
  v_active integer;
begin
  perform public.cs__ensure_user(p_user_id, p_initial_coins);
  select coins into v_coins from public.cs_balances where user_id = p_user_id;
  select coalesce(max(used), 0) into v_used from public.cs_free_usage
  where user_id = p_user_id and day = public.cs__today();
  select count(*) into v_active from public.cs_jobs
  where user_id = p_user_id and status in ('queued', 'running');
  return jsonb_build_object('user_id', p_user_id, 'coins', v_coins,
    'free_jobs_left_today', greatest(p_free_daily - v_used, 0), 'active_jobs', v_active);
end
$$;

-- Fail and refund jobs whose submit died between insert and publish. Returns their ids.
create function public.cs_sweep_unenqueued(p_older_than_seconds integer) returns jsonb
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
    perform public.cs__refund(j);
    ids := ids || to_jsonb(j.id);
  end loop;
  return ids;
end
$$;

-- A cheap round trip for health checks through either adapter.
create function public.cs_ping() returns jsonb
language sql stable as $$ select jsonb_build_object('ok', true) $$;

-- Only the service role (the producer and the worker) may call these.
revoke execute on all functions in schema public from public, anon, authenticated;
grant execute on all functions in schema public to service_role;
