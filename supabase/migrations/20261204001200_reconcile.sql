-- The reconciler (lib/reconcile.py, called by the producer's signed /api/reconcile on a QStash
-- schedule) heals jobs that nothing else will move: a running job whose lease expired, a job
-- queued but never delivered (a lost message, a clock skew beyond the tolerance), and a job past
-- its retry budget whose failure callback was lost. Each step is one function below; each one
-- locks and re-checks the row, so two reconcilers running at once heal a job once.

-- How many times the reconciler re-published the job: the heal's deduplication id carries it
-- (QStash drops a second publish with the job id within its 10-minute window), and past
-- RECONCILE_MAX_HEALS the job is failed instead, so a job that can never be delivered ends.
alter table public.cs_jobs add column heals integer not null default 0 check (heals >= 0);
create index cs_jobs_live_updated on public.cs_jobs (updated_at)
  where status in ('queued', 'running');

-- Jobs that may need healing, oldest first, at most p_limit after the cursor (p_after_at,
-- p_after_id: the last row of the previous page, or nulls): running and not updated for
-- p_running_seconds (a live attempt is told apart by its Redis lease, which the caller checks),
-- or queued, handed to the broker, never started, and not updated for p_queued_seconds.
create function public.cs_reconcile_candidates(
  p_running_seconds integer, p_queued_seconds integer, p_limit integer,
  p_after_at timestamptz, p_after_id uuid
) returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(jsonb_build_object(
      'id', j.id, 'user_id', j.user_id, 'tier', j.tier, 'kind', j.kind, 'status', j.status,
      'attempts', j.attempts, 'heals', j.heals, 'updated_at', j.updated_at)
    order by j.updated_at, j.id), '[]'::jsonb)
  from (
    select * from public.cs_jobs
    where ((status = 'running'
            and updated_at < now() - make_interval(secs => p_running_seconds))
        or (status = 'queued' and enqueued_at is not null and attempts = 0
            and updated_at < now() - make_interval(secs => p_queued_seconds)))
      and (p_after_at is null or (updated_at, id) > (p_after_at, p_after_id))
    order by updated_at, id
    limit greatest(p_limit, 0)
  ) j
$$;

-- Claim one candidate for a re-publish: only while it is still as the caller saw it (same
-- status and attempts, still not updated for p_older_than_seconds). Counts the heal and touches
-- updated_at, so a concurrent reconciler (skip locked, or the re-check) does not claim it too.
-- Returns {claimed, heals}.
create function public.cs_reconcile_claim(
  p_job_id uuid, p_status text, p_attempts integer, p_older_than_seconds integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  select * into j from public.cs_jobs where id = p_job_id for update skip locked;
  if not found or j.status <> p_status or j.attempts <> p_attempts
     or j.updated_at >= now() - make_interval(secs => p_older_than_seconds) then
    return jsonb_build_object('claimed', false);
  end if;
  update public.cs_jobs set heals = heals + 1, updated_at = now()
  where id = p_job_id returning * into j;
  return jsonb_build_object('claimed', true, 'heals', j.heals);
end
$$;

-- Fail a job the reconciler gave up on (past its retry budget, or past RECONCILE_MAX_HEALS),
-- only while it is still as the caller saw it, and apply the refund rule in the same
-- transaction (cs__refund: "delivered output is paid for", at most once per job).
-- Returns {changed, job, user_id, refund}.
create function public.cs_reconcile_fail(
  p_job_id uuid, p_status text, p_attempts integer, p_older_than_seconds integer,
  p_error jsonb, p_max_pct integer
) returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
  v_rule text;
begin
  select * into j from public.cs_jobs where id = p_job_id for update;
  if not found or j.status <> p_status or j.attempts <> p_attempts
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

-- Which of p_ids (a JSON array of admission set members) are terminal jobs, with their user and tier, so the
-- caller frees their admission slots. Ids that are not jobs are skipped.
create function public.cs_reconcile_terminal(p_ids jsonb) returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(jsonb_build_object('id', j.id, 'user_id', j.user_id,
                                               'tier', j.tier)), '[]'::jsonb)
  from public.cs_jobs j
  where j.id = any(array(select x::uuid from jsonb_array_elements_text(p_ids) x
                         where x ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'))
    and j.status in ('succeeded', 'failed', 'cancelled')
$$;
