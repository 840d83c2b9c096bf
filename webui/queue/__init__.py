"""Atelier's job queue and its workers. No gradio or fastapi here; torch only where a worker runs a job.

    fairness     whose job goes next: round-robin across users, FIFO within one (pure)
    dispatch     what workers have and jobs need; which worker runs a job (pure)
    service      JobQueue: submit, wait, cancel, interrupt/skip per owner, positions, estimates, requeue on loss
    requests     a GenerationRequest's needs, cost and label for the queue
    workers      the Worker interface; in-process workers (one, or one per --devices entry)
    remote       pictures computed elsewhere: PNG bytes out, hooks and saving on the head
    ray_workers  Ray actors owning their own pipeline managers, and the pool that keeps them

Every front end reaches it through ``AppContext.submit`` / ``run_job`` (webui/context.py).
"""
