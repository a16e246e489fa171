"""The import-cycle check of scripts/lint.sh, on a package made to have one, and on ours."""

from __future__ import annotations

import sys

from tools.import_cycles import cycles


def test_a_cycle_through_a_lazy_import_is_found_and_the_operator_has_none(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic import b\n")
    (pkg / "b.py").write_text("def f():\n    from cyclic import a  # lazy, still a cycle\n")
    (pkg / "c.py").write_text("from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles("cyclic") == [["cyclic.a", "cyclic.b"]]
    sys.modules.pop("cyclic", None)
    assert cycles("scibox_operator") == []
