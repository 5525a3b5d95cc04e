"""--loop-nice: the event loop's thread yields the CPU to the sink and the embedded engine's threads."""
import os
import threading

from ingestd.server import lower_loop_priority


def thread_nice(pid: int, tid: int) -> int:
    fields = open(f"/proc/{pid}/task/{tid}/stat").read().rpartition(")")[2].split()
    return int(fields[16])  # field 19 of stat(5); fields[0] is field 3


def test_only_the_calling_thread_is_niced():
    seen = {}

    def worker():
        lower_loop_priority(7)
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        child = threading.Thread(target=lambda: seen.setdefault("child", os.getpriority(
            os.PRIO_PROCESS, threading.get_native_id())))
        child.start()
        child.join()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"worker": before + 7, "child": before + 7}  # threads it starts inherit it
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_serving_process_runs_its_loop_niced_and_the_sink_not(ingestd):
    assert ingestd.get("/collect?eventType=1&partnerId=1&entryId=e")[0] == 200
    assert ingestd.wait_rows("SELECT count() AS n FROM analytics.events", 1) == 1  # the sink has shipped
    pid = ingestd.proc.pid
    loop = thread_nice(pid, pid)  # the main thread runs the event loop
    others = {open(f"/proc/{pid}/task/{tid}/comm").read().strip(): thread_nice(pid, int(tid))
              for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid}
    # the sink, the query threads that ran the admin /query above, and every thread of the embedded
    # engine (some of which those threads start on demand) keep the priority ingestd started with
    assert max(others.values()) == loop - 5, others
