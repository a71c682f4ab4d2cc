"""gunicorn entry point: `gunicorn -c worker/gunicorn.conf.py worker.wsgi:app`."""

from worker.app import create_app

app = create_app()
