-- Pipelines (issue 15, item 3): one job runs several steps (`match_from_image`: ocr_extract,
-- job_summary, pre_match_audit, job_match), each its own QStash message with its own attempts.
--
-- `step` is the step to run next (0-based); `steps` holds each finished step's result by name,
-- kept when a later step is retried or fails. `steps_chars` is the size of those results: they
-- are readable in the job (GET /api/jobs/<id> shows them as they finish), so they count as
-- delivered output for the refund rule of the whole job.
alter table public.cs_jobs
  add column step integer not null default 0 check (step >= 0),
  add column steps jsonb not null default '{}'::jsonb,
  add column steps_chars integer not null default 0 check (steps_chars >= 0);

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
                            'step', j.step, 'steps', j.steps);
end
$$;

-- A step succeeded: keep its result, move to the next step with attempts back to 0 and the job
-- queued again (its next message is published after this commits). Only the attempt that runs
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
    typical_chars = p_typical_chars, attempts = 0, status = 'queued', updated_at = now()
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
