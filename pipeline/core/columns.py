"""The run's columns, planned from what its steps declare (`Stage.inputs`, `outputs`,
`optional`, `kept_columns`), so that no stage needs to know another:

- a stage's optional outputs (clip_score's embeddings) are added when a later step reads
  them or the stage's own settings keep them (`Step.want`);
- a column added only for later readers is hidden from the output of its last reader on
  (`PartRef.hidden`: the bytes stay where they were written, no later reader gets them, and
  `kept/` does not hold them);
- every public column a step of the run adds is a name an input column may not use
  (ingest renames such input columns).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.stage import PUBLIC_COLUMNS


@dataclass(frozen=True)
class ColumnPlan:
    added: frozenset    # every public column a step of the run (or an image transform) adds
    hidden: tuple       # per step: the columns hidden from its output on (sorted tuples)


def plan_columns(steps: list, transforms: tuple = ()) -> ColumnPlan:
    """Check each step's inputs against what the steps before it declare (`Step.check_inputs`),
    tell it which optional outputs to add (`Step.want`) and plan what is hidden after each
    step. `transforms`: the run's image transforms (their outputs are added)."""
    reads = [frozenset(step.reads()) for step in steps]
    added = set(PUBLIC_COLUMNS)
    for transform in transforms:
        added.update(name for name, _ in transform.outputs)
    hide_at: list[set] = [set() for _ in steps]
    fields: dict = {}   # column -> (Arrow type, the step that adds it), as declared so far
    for i, step in enumerate(steps):
        step.check_inputs(dict(fields))
        optional = set(step.stage_cls.optional)
        kept = set(step.stage_cls.kept_columns(step.settings))
        later = frozenset().union(*reads[i + 1:])
        wanted = optional & (later | kept)
        if wanted:
            step.want(frozenset(wanted))
        declared = step.stage_cls.output_fields(step.settings)
        fields.update((name, (type_, step.name)) for name, type_ in declared)
        outputs = {name for name, _ in declared}
        added |= outputs
        for column in (outputs & optional) - kept:
            last = max([j for j in range(i + 1, len(steps)) if column in reads[j]], default=i)
            hide_at[last].add(column)
    hidden, cumulative = set(), []
    for columns in hide_at:
        hidden |= columns
        cumulative.append(tuple(sorted(hidden)))
    return ColumnPlan(frozenset(added), tuple(cumulative))
