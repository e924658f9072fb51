"""The run contract: every row type's fields are its table's columns, every name family is complete."""

from servescope.run import names
from servescope.run.rows import ROW_TYPES
from servescope.run.schema import TABLES


def test_every_table_has_a_row_type_whose_fields_are_its_columns():
    assert set(ROW_TYPES) == set(TABLES) == set(names.Table.ALL)
    for name, row_type in ROW_TYPES.items():
        assert row_type._fields == TABLES[name].column_names, name


def test_step_phase_columns_exist_in_the_steps_table():
    columns = set(TABLES[names.Table.STEPS].column_names)
    for phase in names.StepPhase.ALL:
        start, end = names.StepPhase.columns(phase)
        assert start in columns and end in columns, phase
    assert set(names.StepPhase.DISPLAY) == set(names.StepPhase.ALL)


def test_name_families_have_no_duplicates():
    for family in (names.Table, names.RequestEvent, names.StepPhase, names.Region):
        assert len(set(family.ALL)) == len(family.ALL), family.__name__
