"""The docs site builds with --strict (a broken link, a missing page or snippet fails), the README stays short,
and every study's evidence page is in the site and names its study file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                        "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("RunSpec") > 0
    assert "teacher_rule.py" in (tmp_path / "site" / "evidence" / "confirmatory" / "index.html").read_text()


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2 and "pip install" in block[0] and "fairdistill eval" in block[0] and "pytest" in block[1]


def test_every_study_evidence_page_is_in_the_site_and_names_its_study_file():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]
    pages = [p for entry in nav if isinstance(entry, dict) and "Evidence" in entry for d in entry["Evidence"]
             for p in d.values()]
    shown = {(ROOT / "docs" / p).read_text().split('"')[1] for p in pages if p != "evidence/index.md"}
    pages = {f"evidence/{d.name}/README.md" for d in (ROOT / "evidence").iterdir() if (d / "README.md").exists()}
    assert pages <= shown, pages - shown
    for d in (ROOT / "evidence").iterdir():  # a study's folder names its study file; a measurement its command
        if (d / "README.md").exists():
            text = (d / "README.md").read_text()
            if (d / "study.log").exists():
                assert "examples/" in text, f"{d.name}/README.md does not name its study file"
            else:
                assert "fairdistill " in text or "python " in text, f"{d.name}/README.md names no command"
