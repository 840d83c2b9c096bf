"""Interrupt and Skip reach only the presser's own jobs."""

from webui.jobs import JobControl, JobRegistry


def test_interrupt_reaches_all_of_one_clients_jobs_and_nobody_elses():
    jobs = JobRegistry()
    mine_running, mine_queued, theirs = JobControl(), JobControl(), JobControl()
    mine_running.update(state="running")
    jobs.start("me", mine_running)
    jobs.start("me", mine_queued)
    jobs.start("them", theirs)
    assert jobs.skip("me") and mine_running.skipped and not mine_queued.skipped
    assert jobs.interrupt("me")
    assert mine_running.interrupted and mine_queued.interrupted and not theirs.interrupted
    jobs.finish("me", mine_running)
    jobs.finish("me", mine_queued)
    assert not jobs.interrupt("me") and not theirs.interrupted
