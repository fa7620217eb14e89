"""tests/conftest.py's LONGEST_FIRST names test files that exist (a renamed file would silently lose its place)."""

from pathlib import Path

from conftest import LONGEST_FIRST


def test_the_longest_files_listed_first_exist():
    here = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (here / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)


def test_xdist_hands_out_the_files_in_collection_order(pytestconfig):
    # the controller's scheduler as make test builds it (--dist loadfile, two workers), fed a collection
    # in which the longest file has the fewest tests: it must still go out first
    from xdist.scheduler import LoadFileScheduling

    class Config:  # the run's options, two workers
        option = pytestconfig.option

        def getvalue(self, name):
            return ["popen"] * 2 if name == "tx" else getattr(self.option, name)

    class Worker:
        def __init__(self, name):
            self.sent, self.gateway, self.shutting_down = [], type("Gateway", (), {"id": name})(), False

        def send_runtest_some(self, indices):
            self.sent.extend(indices)

        def shutdown(self):
            pass

    collection = ["tests/test_backdoor_e2e.py::test_a", "tests/test_backdoor_e2e.py::test_b"]
    collection += [f"tests/test_many.py::test_{i}" for i in range(50)]
    collection += [f"tests/test_more.py::test_{i}" for i in range(30)]
    scheduler, workers = LoadFileScheduling(Config()), [Worker("gw0"), Worker("gw1")]
    for worker in workers:
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, collection)
    scheduler.schedule()
    first = collection[workers[0].sent[0]]
    assert first.startswith("tests/test_backdoor_e2e.py"), (
        "xdist re-sorted the files by test count (tests/conftest.py's pytest_configure must set loadscopereorder off)")
