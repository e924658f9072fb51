"""The public analysis API: every documented name imports from servescope.analysis, and the list in
docs/analysis.md ("Python API") is the package's __all__, no more and no less."""

import re
from pathlib import Path

import servescope.analysis as analysis

DOC = Path(__file__).parents[1] / "docs" / "analysis.md"


def documented_names() -> set[str]:
    section = DOC.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= {m for m in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", first_cell)}
    return names


def test_the_documented_list_is_the_packages_public_api():
    assert documented_names() == set(analysis.__all__)


def test_every_public_name_resolves_and_says_what_it_returns():
    from servescope.analysis import fluidity_index  # the import the evaluation issue asked for

    assert fluidity_index([0.5, 0.25], 1.0, 0.25) == (1.0, 0, 2)
    for name in analysis.__all__:
        obj = getattr(analysis, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    try:
        analysis.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
