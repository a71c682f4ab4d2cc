-- Pipelines (issue 15, item 3): one job runs several steps (`match_from_image`: ocr_extract,
-- job_summary, pre_match_audit, job_match), each its own QStash message with its own attempts.
--
-- `step` is the step to run next (0-based); `steps` holds each finished step's result by name,
-- kept when a later step is retried or fails. `steps_chars` is the size of those results: they
-- are readable in the job (GET /api/jobs/<id> shows them as they finish), so they count as
-- delivered output for the refund rule of the whole job. `attempts` keeps counting across
-- steps (a client drops the text of a lower attempt, as for any retry); `step_attempts_base` is
-- its value when the current step began, so each step has its own retry budget: the worker's
-- last attempt and the reconciler's rules count `attempts - step_attempts_base`.
alter table public.cs_jobs
  add column step integer not null default 0 check (step >= 0),
  add column steps jsonb not null default '{}'::jsonb,
  add column steps_chars integer not null default 0 check (steps_chars >= 0),
  add column step_attempts_base integer not null default 0 check (step_attempts_base >= 0);

-- A delivery begins an attempt of the job's current step: as before, plus `step` and `steps`.
create or replace function public.cs_start_attempt(p_job_id uuid) returns jsonb
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
                            'user_id', j.user_id, 'input', j.input,
                            'step', j.step, 'steps', j.steps,
                            'attempts_base', j.step_attempts_base);
end
$$;

-- A step succeeded: keep its result, move to the next step (its attempts counted from here) with
-- the job queued again (its next message is published after this commits). Only the attempt that runs
-- the step may do it (stale: another attempt, or another step, holds the job), never on a
-- terminal job (a cancel meanwhile). Returns {outcome: advanced | terminal | stale | not_found}.
create function public.cs_advance_step(
  p_job_id uuid, p_attempt integer, p_step integer, p_name text, p_result jsonb,
  p_chars integer, p_typical_chars integer
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
    return jsonb_build_object('outcome', 'terminal', 'job', public.cs__job_json(j));
  end if;
  if j.status <> 'running' or j.attempts <> p_attempt or j.step <> p_step then
    return jsonb_build_object('outcome', 'stale');
  end if;
  update public.cs_jobs set step = step + 1, steps = steps || jsonb_build_object(p_name, p_result),
    steps_chars = steps_chars + greatest(p_chars, 0),
    delivered_chars = greatest(delivered_chars, steps_chars + greatest(p_chars, 0)),
    typical_chars = p_typical_chars, step_attempts_base = attempts, status = 'queued',
    updated_at = now()
  where id = p_job_id returning * into j;
  return jsonb_build_object('outcome', 'advanced', 'job', public.cs__job_json(j),
                            'step', j.step);
end
$$;

-- A pipeline's finished steps are readable while it runs: the job's JSON carries them.
create or replace function public.cs__job_json(j public.cs_jobs) returns jsonb
language sql immutable as $$
  select jsonb_build_object(
    'id', j.id, 'kind', j.kind, 'tier', j.tier, 'status', j.status, 'cost', j.cost,
    'attempts', j.attempts, 'created_at', j.created_at, 'started_at', j.started_at,
    'finished_at', j.finished_at, 'result', j.result, 'error', j.error)
    || case when j.steps = '{}'::jsonb then '{}'::jsonb
       else jsonb_build_object('step', j.step, 'steps', j.steps) end
$$;

-- The reconciler's rules, per step: a job queued for a step none of whose attempts started yet
-- (a lost message), and the retry budget of the running step (`attempts` below is the step's
-- own count). As 20261204001200_reconcile.sql otherwise; for a kind, step_attempts_base is 0.
create or replace function public.cs_reconcile_candidates(
  p_running_seconds integer, p_queued_seconds integer, p_limit integer,
  p_after_at timestamptz, p_after_id uuid
) returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(jsonb_build_object(
      'id', j.id, 'user_id', j.user_id, 'tier', j.tier, 'kind', j.kind, 'status', j.status,
      'attempts', j.attempts - j.step_attempts_base, 'heals', j.heals,
      'updated_at', j.updated_at)
    order by j.updated_at, j.id), '[]'::jsonb)
  from (
    select * from public.cs_jobs
    where ((status = 'running'
            and updated_at < now() - make_interval(secs => p_running_seconds))
        or (status = 'queued' and enqueued_at is not null and attempts = step_attempts_base
            and updated_at < now() - make_interval(secs => p_queued_seconds)))
      and (p_after_at is null or (updated_at, id) > (p_after_at, p_after_id))
    order by updated_at, id
    limit greatest(p_limit, 0)
  ) j
$$;

create or replace function public.cs_reconcile_claim(
  p_job_id uuid, p_status text, p_attempts integer, p_older_than_seconds integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update skip locked;
  if not found or j.status <> p_status or j.attempts - j.step_attempts_base <> p_attempts
     or j.updated_at >= now() - make_interval(secs => p_older_than_seconds) then
    return jsonb_build_object('claimed', false);
  end if;
  update public.cs_jobs set heals = heals + 1, updated_at = now()
  where id = p_job_id returning * into j;
  return jsonb_build_object('claimed', true, 'heals', j.heals);
end
$$;

create or replace function public.cs_reconcile_fail(
  p_job_id uuid, p_status text, p_attempts integer, p_older_than_seconds integer,
  p_error jsonb, p_max_pct integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
  v_rule text;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status <> p_status or j.attempts - j.step_attempts_base <> p_attempts
     or j.updated_at >= now() - make_interval(secs => p_older_than_seconds) then
    return jsonb_build_object('changed', false);
  end if;
  update public.cs_jobs set status = 'failed', error = p_error, finished_at = now(),
    updated_at = now()
  where id = p_job_id returning * into j;
  v_rule := public.cs__refund(j, p_max_pct);
  return jsonb_build_object('changed', true, 'job', public.cs__job_json(j),
                            'user_id', j.user_id, 'refund', v_rule);
end
$$;
