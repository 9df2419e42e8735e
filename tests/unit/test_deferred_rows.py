"""A task may stop early and defer its last rows: the step runs them as smaller tasks, round
after round, and its output keeps the input's rows, in order, each exactly once."""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core import parts
from pipeline.core.stage import DEFERRED, Stage, with_reason
from pipeline.core.steps import SPREAD, Step, execute_step, logical_parts
from pipeline.core.tasks import PartTask, ReadParts, StageOp, run_part_task
from pipeline.engines.local import LocalEngine


class ReachTwo(Stage):
    """Keeps the first two rows of a task (drops odd ids), defers the rest."""
    name = "reach_two"
    inputs = ("uid",)

    def process(self, table):
        ids = pc.cast(table["uid"], pa.int64())
        reasons = [None if i < 2 and v % 2 == 0 else "odd" if i < 2 else DEFERRED
                   for i, v in enumerate(ids.to_pylist())]
        return with_reason(table, pa.array(reasons, pa.string()))


def input_parts(folder, sizes):
    refs, start = [], 0
    for n, rows in enumerate(sizes):
        path = folder / f"in-{n}.parquet"
        pq.write_table(pa.table({"uid": [str(i) for i in range(start, start + rows)],
                                 "url": [f"http://x/{i}" for i in range(start, start + rows)]}), path)
        refs.append(parts.PartRef(str(path)))
        start += rows
    return refs


def test_deferred_rows_run_again_in_order_until_every_row_is_reached(tmp_path):
    refs = input_parts(tmp_path, [40, 3, 1])
    with LocalEngine(processes=1) as engine:
        record = execute_step(Step(ReachTwo, None), engine, str(tmp_path / "run"), 1, 0, refs)
    kept = pa.concat_tables(parts.read_ref(parts.as_ref(p)) for p in record["parts"])
    assert kept["uid"].to_pylist() == [str(i) for i in range(44) if i % 2 == 0]
    assert record["rows_in"] == 44 and record["rows_out"] == 22 and record["dropped"] == {"odd": 22}
    names = [p["name"] for p in record["phases"]]
    assert names[:3] == ["map", "rest1", "rest2"], names
    first_rest = record["phases"][1]
    assert first_rest["tasks"] == SPREAD + 1   # 38 rows of part 0 in 8 pieces, 1 of part 1
    ledger = pa.concat_tables(pq.read_table(f) for f in record["dropped_files"])
    assert sorted(ledger["uid"].to_pylist(), key=int) == [str(i) for i in range(44) if i % 2]
    # the next step reads each input part with the pieces of its rest, as one part
    groups = logical_parts(parts.as_refs(record["parts"]))
    assert [sum(parts.num_rows(r) for r in g) for g in groups] == [20, 2, 0]
    assert [len(g) for g in groups][1:] == [2, 1] and all(r.joined for g in groups for r in g[1:])


class DeferTheMiddle(ReachTwo):
    def process(self, table):
        reasons = [DEFERRED if i == 1 else None for i in range(table.num_rows)]
        return with_reason(table, pa.array(reasons, pa.string()))


def test_deferring_rows_that_are_not_the_last_ones_is_an_error(tmp_path):
    refs = input_parts(tmp_path, [4])
    task = PartTask(str(tmp_path / "phase"), 0, "t", ReadParts(refs), StageOp(DeferTheMiddle, None))
    with pytest.raises(RuntimeError, match="not its last"):
        run_part_task(task)
