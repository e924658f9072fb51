"""A run is verifiable: every damaged part is named, left out, and the totals come from the rest.

The damage cases are issue 14's "Damaged runs": every token_emissions part duplicated, a table
folder removed, a column dropped from one part, a part cut short, garbage bytes, a part of another
run, a run whose recorder failed, an engine that never ran. Each is made on a copy of a real
recorded run (the session's offline vLLM run) and on a many-part hand-built run; the expected
totals are recomputed independently from the Parquet files themselves (pyarrow, no servescope
reader), before the damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from servescope.run.data import load_run
from servescope.run.directory import RunDirError
from servescope.run.tables import read_table
from servescope.run.manifest import write_manifest
from servescope.run.parts import write_part

from runbuilder import RunBuilder

REPO = Path(__file__).resolve().parent.parent
LEGACY_ARCHIVE = REPO / "benchmarks/results/h100-spec-study-3/lease3-draft-k4-a3.5/runs.tar.gz"
T = 10**12


# ---- independent recomputation ------------------------------------------------------------------
def tokens_in(path: Path) -> int:
    """Output tokens in one token_emissions part, read with pyarrow alone."""
    return pc.sum(pq.read_table(path, columns=["num_tokens"])["num_tokens"]).as_py() or 0


def parts_of(run: Path, table: str = "token_emissions") -> list[Path]:
    return sorted((run / "tables" / table).glob("*.parquet"))


def total_tokens(run_data) -> int:
    return pc.sum(run_data.token_emissions["num_tokens"]).as_py() or 0


def built_run(root: Path, name: str = "run", *, indexed: bool = True, parts: int = 5) -> Path:
    """A hand-built run: 10 requests, 3 emissions each (1, 2 and 3 tokens), split into `parts` parts per table."""
    builder = RunBuilder(root, name)
    for i in range(10):
        t = T + i * 10_000
        builder.request(f"r{i}", arrival_ns=t, queued_ns=t + 10, scheduled_ns=t + 20, prompt_tokens=4,
                        emissions=[(3 * i, t + 100, 1), (3 * i + 1, t + 200, 2), (3 * i + 2, t + 300, 3)],
                        finished_ns=t + 300)
    return builder.write(parts=parts, indexed=indexed)


# ---- the damage ---------------------------------------------------------------------------------
def duplicate_every_part(run: Path) -> int:
    for part in parts_of(run):
        shutil.copy(part, part.with_name(part.stem + " (copy).parquet"))
    return 0  # tokens lost


def remove_folder(run: Path) -> int:
    lost = sum(tokens_in(p) for p in parts_of(run))
    shutil.rmtree(run / "tables" / "token_emissions")
    return lost


def drop_a_column(run: Path) -> int:
    part = parts_of(run)[0]
    lost = tokens_in(part)
    pq.write_table(pq.read_table(part).drop(["num_tokens"]), part)
    return lost


def cut_a_part_short(run: Path) -> int:
    part = parts_of(run)[-1]
    lost = tokens_in(part)
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    return lost


def overwrite_with_garbage(run: Path) -> int:
    part = parts_of(run)[0]
    lost = tokens_in(part)
    part.write_bytes(os.urandom(len(part.read_bytes())))
    return lost


def add_a_garbage_part(run: Path) -> int:
    (run / "tables" / "token_emissions" / "stray-1-000001.parquet").write_bytes(b"PAR1" + os.urandom(300))
    return 0


def add_a_part_of_another_run(run: Path) -> int:
    other = built_run(run.parent, f"{run.name}-other")
    shutil.copy(parts_of(other)[0], run / "tables" / "token_emissions" / "EngineCore-99-000001.parquet")
    return 0


DAMAGE = {
    "every part duplicated": (duplicate_every_part, "copy"),
    "folder removed": (remove_folder, "missing"),
    "a column dropped": (drop_a_column, "changed since it was written"),
    "a part cut short": (cut_a_part_short, "changed since it was written"),
    "a part overwritten with garbage": (overwrite_with_garbage, "changed since it was written"),
    "a garbage part added": (add_a_garbage_part, "unreadable Parquet part"),
    "a part of another run added": (add_a_part_of_another_run, "another run"),
}
# Without a part index, the checks that need none still hold.
LEGACY_DAMAGE = {
    "every part duplicated": (duplicate_every_part, "duplicate of"),
    "a column dropped": (drop_a_column, "column 'num_tokens' missing"),
    "a part cut short": (cut_a_part_short, "unreadable Parquet part"),
    "a part overwritten with garbage": (overwrite_with_garbage, "unreadable Parquet part"),
    "a garbage part added": (add_a_garbage_part, "unreadable Parquet part"),
}


# ---- writing ------------------------------------------------------------------------------------
def test_every_part_is_indexed_with_its_rows_checksum_and_run_id(tmp_path):
    run = built_run(tmp_path)
    manifest = write_manifest(run)
    listed = {e["file"]: e for e in manifest["parts"]}
    on_disk = sorted(p.relative_to(run).as_posix() for p in (run / "tables").glob("*/*.parquet"))
    assert sorted(listed) == on_disk and len(on_disk) == 2 * 5  # two tables of five parts
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    for file, entry in listed.items():
        data = (run / file).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        table = pq.read_table(run / file)
        assert entry["rows"] == table.num_rows and entry["run_id"] == run_id
        assert table.schema.metadata[b"servescope.run_id"].decode() == run_id
        assert table.schema.metadata[b"servescope.table"].decode() == entry["table"] == file.split("/")[1]
    assert load_run(run).warnings == []


def test_a_part_is_never_overwritten(tmp_path):
    run = built_run(tmp_path)
    before = parts_of(run)[0].read_bytes()
    table = pq.read_table(parts_of(run)[0])
    with pytest.raises(RunDirError, match="nothing recorded is overwritten"):
        write_part(run, "token_emissions", table, writer="builder-1", name=parts_of(run)[0].stem)
    assert parts_of(run)[0].read_bytes() == before
    assert not list((run / "tables" / "token_emissions").glob(".*"))  # no temporary file left behind


# ---- reading damaged hand-built runs --------------------------------------------------------------
@pytest.mark.parametrize("case", DAMAGE)
def test_damage_is_named_and_the_total_comes_from_the_rest(tmp_path, case):
    damage, named = DAMAGE[case]
    run = built_run(tmp_path)
    clean = sum(tokens_in(p) for p in parts_of(run))
    lost = damage(run)
    data = load_run(run)
    assert total_tokens(data) == clean - lost
    assert any(named in w for w in data.warnings), data.warnings
    assert data.request_events.num_rows == 40  # the other tables are read whole
    with pytest.raises(RunDirError):
        load_run(run, strict=True)


@pytest.mark.parametrize("case", LEGACY_DAMAGE)
def test_damage_to_a_run_without_an_index_is_named_where_it_can_be(tmp_path, case):
    damage, named = LEGACY_DAMAGE[case]
    run = built_run(tmp_path, indexed=False)
    clean = sum(tokens_in(p) for p in parts_of(run))
    lost = damage(run)
    data = load_run(run)
    assert total_tokens(data) == clean - lost
    assert any(named in w for w in data.warnings), data.warnings
    assert any("cannot be verified" in w for w in data.warnings)


def test_a_run_without_an_index_checks_rows_against_its_process_records(tmp_path):
    run = built_run(tmp_path, indexed=False)
    (run / "processes").mkdir()
    (run / "processes" / "1.json").write_text(json.dumps(
        {"pid": 1, "role": "EngineCore", "rows_written": {"token_emissions": 30, "request_events": 40}}))
    assert [w for w in load_run(run).warnings if "rows read" in w] == []
    shutil.rmtree(run / "tables" / "token_emissions")
    assert any("token_emissions: 0 rows read, but its processes report writing 30" in w
               for w in load_run(run).warnings)


def test_many_damaged_parts_are_summed_up_not_listed_one_by_one(tmp_path):
    run = built_run(tmp_path, parts=10)
    duplicate_every_part(run)
    warnings = load_run(run).warnings
    assert len(warnings) == 3 and "8 more parts duplicates of parts already read" in warnings[-1]


def test_the_index_itself_damaged_is_named(tmp_path):
    run = built_run(tmp_path)
    index = run / "parts" / "builder-1.jsonl"
    index.write_bytes(index.read_bytes() + b'{"table": "steps", "fi')  # a writer killed mid-line
    warnings = load_run(run).warnings
    assert any(str(index) in w and "line 11" in w for w in warnings), warnings
    shutil.rmtree(run / "parts")
    assert any("part index missing" in w for w in load_run(run).warnings)
    write_manifest(run)  # the manifest's copy of the index (now empty) is what is left
    assert any("not in the part index" in w for w in load_run(run).warnings)


def test_read_table_warns_on_the_servescope_logger_and_strict_raises(tmp_path, caplog):
    run = built_run(tmp_path)
    drop_a_column(run)
    with caplog.at_level("WARNING", logger="servescope"):
        table = read_table(run, "token_emissions")
    assert table.num_rows == 24 and "changed since it was written" in caplog.text
    warnings: list[str] = []
    read_table(run, "token_emissions", warnings=warnings)
    assert len(warnings) == 1
    with pytest.raises(RunDirError, match="changed since it was written"):
        read_table(run, "token_emissions", strict=True)


def test_a_run_recorded_before_the_index_reads_with_one_note(tmp_path):
    with tarfile.open(LEGACY_ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    run = tmp_path / "runs" / "draft-k4-a3.5" / "c8-rep0"
    data = load_run(run)
    assert len(data.warnings) == 1 and "cannot be verified" in data.warnings[0]
    assert total_tokens(data) == sum(tokens_in(p) for p in parts_of(run)) > 0


# ---- a real recorded run --------------------------------------------------------------------------
def copy_run(offline_run, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(offline_run.run_dir, dest)
    return dest


def test_a_real_run_is_indexed_and_reads_clean(offline_run):
    data = load_run(offline_run.run_dir)
    assert data.warnings == []
    expected = offline_run.num_requests * offline_run.max_tokens
    assert total_tokens(data) == expected == sum(tokens_in(p) for p in parts_of(offline_run.run_dir))
    manifest = json.loads((offline_run.run_dir / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(offline_run.run_dir).as_posix()
                     for p in (offline_run.run_dir / "tables").glob("*/*.parquet"))
    assert sorted(e["file"] for e in manifest["parts"]) == on_disk
    assert manifest["command"]["exit_code"] == 0


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_real_run_gives_the_total_of_the_rest(offline_run, tmp_path, case):
    damage, named = DAMAGE[case]
    run = copy_run(offline_run, tmp_path, "damaged")
    expected = offline_run.num_requests * offline_run.max_tokens - damage(run)
    data = load_run(run)
    assert total_tokens(data) == expected
    assert any(named in w for w in data.warnings), data.warnings


def servescope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "servescope", *args], capture_output=True, text=True, timeout=600)


def test_every_reading_command_prints_the_warnings_and_strict_makes_them_errors(offline_run, tmp_path):
    run = copy_run(offline_run, tmp_path, "damaged")
    lost = drop_a_column(run)
    part = parts_of(run)[0]
    proc = servescope("analyze", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["run"]["output_tokens"] == offline_run.num_requests * offline_run.max_tokens - lost
    assert [w for w in result["run"]["warnings"] if str(part) in w]
    assert f"servescope: warning: {part}" in proc.stderr and "Traceback" not in proc.stderr
    commands = {
        "analyze": ["analyze", str(run)],
        "audit": ["audit", str(run)],
        "compare": ["compare", str(offline_run.run_dir), str(run)],
        "export": ["export", str(run), "--perfetto", str(tmp_path / "trace.json")],
        "report": ["report", str(run), "--out", str(tmp_path / "report")],
    }
    for name, args in commands.items():
        proc = servescope(*args, "--strict")
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith(f"servescope: {part}"), (name, proc.stderr)
        assert "Traceback" not in proc.stderr
    audit = servescope("audit", str(run), "--json")
    assert audit.returncode == 0 and [w for w in json.loads(audit.stdout)["run_warnings"][str(run)] if str(part) in w]
    compare = json.loads(servescope("compare", str(offline_run.run_dir), str(run), "--json").stdout)
    assert compare["run_warnings"] == {str(offline_run.run_dir): [], str(run): result["run"]["warnings"]}


def test_a_run_whose_recorder_failed_says_so(faulty_offline_run):
    proc = servescope("analyze", str(faulty_offline_run.run_dir), "--json")
    assert proc.returncode == 0
    warnings = json.loads(proc.stdout)["run"]["warnings"]
    assert any("internal errors" in w for w in warnings), warnings
    assert "internal errors" in proc.stderr
    assert servescope("audit", str(faulty_offline_run.run_dir), "--strict").returncode == 2


def test_an_engine_that_never_ran_is_named_with_its_exit_code(tmp_path):
    run = tmp_path / "run"
    proc = servescope("run", "--out", str(run), "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["command"]["exit_code"] == 3
    proc = servescope("analyze", str(run), "--json")
    assert proc.returncode == 0
    (warning,) = json.loads(proc.stdout)["run"]["warnings"]
    assert "the engine did not run" in warning and "exited with code 3" in warning
    assert servescope("analyze", str(run), "--strict").returncode == 2
