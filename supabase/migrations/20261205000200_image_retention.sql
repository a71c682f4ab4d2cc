-- Image retention (issue 15's known limit): an uploaded image (a screenshot of a resume or a job
-- posting: personal data) is deleted from Storage once no job needs it. The reconciler
-- (lib/retention.py, on its QStash schedule) asks these functions which images are due, deletes
-- them through Storage's API, then marks their jobs; a run that dies in between deletes them
-- again next time, which Storage answers as a no-op.
--
-- Every image kind names its upload at `input.image.path` (tests/test_retention.py checks each
-- handler's `images`), so one expression index finds the jobs that name a path.

-- When the job's image was released: deleted, or handed on to a later job that names it too.
alter table public.cs_jobs add column images_released_at timestamptz;
create index cs_jobs_image_path on public.cs_jobs ((input #>> '{image,path}'))
  where input ? 'image';
create index cs_jobs_images_due on public.cs_jobs (finished_at, id)
  where finished_at is not null and images_released_at is null and input ? 'image';

-- Terminal jobs whose image is not yet released and that ended more than p_retention_seconds
-- ago, earliest first, at most p_limit: {id, user_id, path, needed}. `needed` says another job
-- names the same path and is not terminal (a queued or running job, or a pipeline whose ocr
-- step runs later) or ended within the retention: that job releases it in its turn.
create function public.cs_images_due(p_retention_seconds integer, p_limit integer)
returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(jsonb_build_object(
      'id', j.id, 'user_id', j.user_id, 'path', j.input #>> '{image,path}',
      'needed', exists (
        select 1 from public.cs_jobs o
        where o.input ? 'image' and (o.input #>> '{image,path}') = (j.input #>> '{image,path}')
          and o.id <> j.id
          and (o.finished_at is null
               or o.finished_at >= now() - make_interval(secs => p_retention_seconds))))
    order by j.finished_at, j.id), '[]'::jsonb)
  from (
    select * from public.cs_jobs
    where finished_at is not null and images_released_at is null and input ? 'image'
      and finished_at < now() - make_interval(secs => p_retention_seconds)
    order by finished_at, id
    limit greatest(p_limit, 0)
  ) j
$$;

-- Mark the jobs' images released (the caller deleted them, or another job needs them). Only
-- terminal jobs; a second call changes nothing. Returns how many rows it marked.
create function public.cs_images_released(p_ids uuid[]) returns integer
language sql as $$
  with marked as (
    update public.cs_jobs set images_released_at = now()
    where id = any(p_ids) and finished_at is not null and images_released_at is null
    returning 1
  )
  select count(*)::integer from marked
$$;

-- Of the uploads `p_paths`, those that some job names (whatever its status): the job rule
-- above deletes them, never the sweep of uploads no job names.
create function public.cs_images_named(p_paths text[]) returns jsonb
language sql stable as $$
  select coalesce(jsonb_agg(distinct p.path), '[]'::jsonb)
  from unnest(p_paths) as p(path)
  where exists (
    select 1 from public.cs_jobs j
    where j.input ? 'image' and (j.input #>> '{image,path}') = p.path)
$$;
