-- Stop means stop spending (issue 13, item 3): a cancelled job keeps the output its attempt had
-- delivered when the cancel stopped it, as `result.partial`, readable through cs_get_job.
--
-- The worker calls this after its attempt stopped on the cancel, with the text it had written
-- to the job's stream (only written text: what the refund rule counted as delivered, so the
-- partial never holds output the user was refunded for). Only the attempt that ran last may
-- keep it, only once, and only on a cancelled job without a result.
--
-- A result stays a succeeded job's, except this one shape: a cancelled job's `{"partial": text}`.
alter table public.cs_jobs drop constraint cs_jobs_check1;
alter table public.cs_jobs add constraint cs_jobs_result_check check (
  (status = 'succeeded') = (result is not null)
  or (status = 'cancelled' and jsonb_typeof(result -> 'partial') = 'string'
      and result - 'partial' = '{}'::jsonb)
);

create function public.cs_keep_partial(p_job_id uuid, p_attempt integer, p_partial text)
returns jsonb
language plpgsql as $$
declare
  j public.cs_jobs;
begin
  update public.cs_jobs set result = jsonb_build_object('partial', p_partial), updated_at = now()
  where id = p_job_id and status = 'cancelled' and result is null and attempts = p_attempt
  returning * into j;
  if not found then
    return jsonb_build_object('outcome', 'unchanged');
  end if;
  return jsonb_build_object('outcome', 'kept', 'job', public.cs__job_json(j));
end
$$;
