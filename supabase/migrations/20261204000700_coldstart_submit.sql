-- A submit in three sequential round trips (docs/architecture.md, "Submit"): this one SQL call,
-- then admission and the queued event (one Lua script), then the publish. It used to take six:
-- cs_prepare_submit, admission, cs_submit, the queued event, the publish, cs_mark_enqueued.

-- Everything the database does for a submit, in one transaction: the idempotency lookup, the
-- initial coins of a new user, the tier choice (auto: paid when the coins cover the cost, else
-- free while the daily allowance lasts; nothing is downgraded from an explicit tier), the charge
-- and the insert. The job counts as enqueued from its insert: the producer publishes it next, or
-- takes it back (cs_withdraw_submit: admission refused or Redis down) or fails and refunds it
-- (cs_abort_submit: the broker refused), so nothing has to mark it once the broker accepted it.
-- Outcomes: created (job), existing (job, enqueued), idempotency_conflict,
-- quota_exhausted (coins, free_jobs_left_today).
create function public.cs_submit_job(
  p_job_id uuid, p_user_id uuid, p_kind text, p_tier text, p_cost integer, p_input jsonb,
  p_idempotency_key text, p_request_hash text, p_initial_coins integer, p_free_daily integer
) returns jsonb
language plpgsql as $$
declare
  seen jsonb;
  v_coins integer;
  v_used integer;
  v_tier text;
  j public.cs_jobs;
begin
  if p_tier not in ('auto', 'paid', 'free') then
    raise exception 'cs_submit_job: tier must be auto, paid or free, not %', p_tier
      using errcode = '22023';
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
  if p_tier in ('auto', 'paid') and v_coins >= p_cost then
    v_tier := 'paid';
    update public.cs_balances set coins = coins - p_cost, updated_at = now()
    where user_id = p_user_id;
    insert into public.cs_ledger (user_id, job_id, reason, amount)
    values (p_user_id, p_job_id, 'debit', -p_cost);
  elsif p_tier in ('auto', 'free') and p_free_daily > 0 then
    insert into public.cs_free_usage as u (user_id, day, used)
    values (p_user_id, public.cs__today(), 1)
    on conflict (user_id, day) do update set used = u.used + 1
    where u.used < p_free_daily;
    if found then
      v_tier := 'free';
    end if;
  end if;
  if v_tier is null then
    select coalesce(max(used), 0) into v_used from public.cs_free_usage
    where user_id = p_user_id and day = public.cs__today();
    return jsonb_build_object('outcome', 'quota_exhausted', 'coins', v_coins,
                              'free_jobs_left_today', greatest(p_free_daily - v_used, 0));
  end if;
  insert into public.cs_jobs (id, user_id, kind, tier, cost, input, enqueued_at)
  values (p_job_id, p_user_id, p_kind, v_tier,
          case when v_tier = 'paid' then p_cost else 0 end, p_input, now())
  returning * into j;
  if p_idempotency_key is not null then
    insert into public.cs_idempotency (user_id, key, request_hash, job_id)
    values (p_user_id, p_idempotency_key, p_request_hash, p_job_id);
  end if;
  return jsonb_build_object('outcome', 'created', 'job', public.cs__job_json(j));
end
$$;

-- Admission refused the job just submitted, or Redis could not be reached: take the submit back.
-- The charge is refunded (the ledger keeps the debit and its refund, so it still sums to the
-- balance), and the job and its idempotency key are removed: the client was never given the
-- job, and its retry with the same key submits afresh. Only a job no delivery has touched
-- qualifies. Outcomes: withdrawn, unchanged.
create function public.cs_withdraw_submit(p_job_id uuid) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status <> 'queued' or j.attempts > 0 then
    return jsonb_build_object('outcome', 'unchanged');
  end if;
  perform public.cs__refund(j, 100);  -- nothing was delivered: the rule refunds in full
  delete from public.cs_idempotency where job_id = p_job_id;
  delete from public.cs_jobs where id = p_job_id;
  return jsonb_build_object('outcome', 'withdrawn');
end
$$;

-- The broker refused or could not be reached: fail the job, refund it, and free its idempotency
-- key so the client's retry with the same key submits afresh. A job from cs_submit_job is
-- enqueued from its insert, so only a delivery (an attempt) or a finish protects a job now.
create or replace function public.cs_abort_submit(p_job_id uuid, p_error jsonb) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status <> 'queued' or j.attempts > 0 then
    return jsonb_build_object('outcome', 'unchanged');
  end if;
  update public.cs_jobs set status = 'failed', error = p_error, finished_at = now(),
    updated_at = now() where id = p_job_id returning * into j;
  perform public.cs__refund(j, 100);  -- nothing was delivered: the rule refunds in full
  delete from public.cs_idempotency where job_id = p_job_id;
  return jsonb_build_object('outcome', 'aborted', 'job', public.cs__job_json(j));
end
$$;

-- Only the service role (the producer and the worker) may call these.
revoke execute on function public.cs_submit_job(uuid, uuid, text, text, integer, jsonb, text, text,
  integer, integer) from public, anon, authenticated;
revoke execute on function public.cs_withdraw_submit(uuid) from public, anon, authenticated;
grant execute on function public.cs_submit_job(uuid, uuid, text, text, integer, jsonb, text, text,
  integer, integer) to service_role;
grant execute on function public.cs_withdraw_submit(uuid) to service_role;
