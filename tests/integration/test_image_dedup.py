"""image_dedup's global step on the local engine's process pool: global over parts,
conserving, resumable, and the same kept set as the in-memory stage."""
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import parts
from pipeline.core.steps import execute_step
from pipeline.engines.local import LocalEngine
from pipeline.stages.image_dedup import ImageDedupStep
from tests.unit.test_image_dedup import dropped_positions, encode, rows, scene, variants


def write_parts(folder, tables) -> list[str]:
    paths = []
    for i, table in enumerate(tables):
        pq.write_table(table, folder / f"in-{i}.parquet")
        paths.append(str(folder / f"in-{i}.parquet"))
    return paths


def test_step_on_local_engine_is_global_conserving_and_resumable(tmp_path):
    originals = [encode(scene(s)) for s in range(6)]
    near = variants(scene(0))[:2]
    # duplicates across parts: the earliest `_pos` wins globally, whatever part it is in
    part0 = rows([originals[0], originals[1], near[0], originals[2]], [40, 41, 42, 43])
    part1 = rows([near[1], originals[3], originals[1], originals[4]], [10, 11, 12, 13])
    part2 = rows([originals[5], originals[5]], [90, 91])
    inputs = write_parts(tmp_path, [part0, part1, part2, part2.slice(0, 0)])
    records = []
    with LocalEngine(2) as engine:
        # 1 bucket and one group; then 20 buckets (many empty) and groups of <= 4 rows
        for run, per_bucket, task_rows in (("a", 2_000_000, 1_000_000), ("b", 3, 4)):
            step = ImageDedupStep(SimpleNamespace(phash_distance=4), key_rows_per_bucket=per_bucket)
            records.append(execute_step(step, engine, tmp_path / run, 5, 0, inputs, task_rows))
        again = execute_step(step, engine, tmp_path / "b", 5, 0, inputs, 4)
    assert again == records[1]
    assert len(list((tmp_path / "a" / "steps" / "05_image_dedup" / "apply" / "done").glob("*.json"))) == 1
    assert len(list((tmp_path / "b" / "steps" / "05_image_dedup" / "apply" / "done").glob("*.json"))) == 3
    for record in records:
        assert record["rows_in"] == 10 and record["dropped"] == {"duplicate_image": 4}
        assert record["rows_out"] == 6 and len(record["parts"]) == 3  # the empty part is left out
        kept = pa.concat_tables([parts.read_ref(p) for p in parts.as_refs(record["parts"])])
        assert sorted(kept["_pos"].to_pylist()) == [10, 11, 12, 13, 43, 90]
        assert kept["phash"].null_count == 0 and "_dup" not in kept.column_names
    # the same kept set as the in-memory stage over all rows at once
    assert dropped_positions(pa.concat_tables([part0, part1, part2]), 4) == {40, 41, 42, 91}
