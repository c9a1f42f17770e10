"""The Celery edge: the app and its settings, the job supervisor task, the trainer process, the reaper."""
