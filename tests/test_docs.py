"""The documentation: the docs site builds without a warning, the README stays short, and no product file points
outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 15_000

# What ships: the files a user of the repository reads or runs. .ci/run (the CI machine's environment) and the tests
# are not product files.
PRODUCT_FILES = ["README.md", "dvc.yaml", "params.yaml", "mkdocs.yml", "pyproject.toml"]
PRODUCT_TREES = ["docs", "bench", "acseg", "conf", "scripts"]
OUTSIDE = ("../shared", "shared/docs")


def product_files() -> list[Path]:
    files = [ROOT / name for name in PRODUCT_FILES if (ROOT / name).is_file()]
    for tree in PRODUCT_TREES:
        files += sorted(p for p in (ROOT / tree).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def test_docs_site_builds_strictly(tmp_path):
    """mkdocs and mkdocs-material come with the test extras (requirements.lock); a missing one fails here."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_at_most_15_kb():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, more than {README_MAX_BYTES}: move detail to docs/"


def test_no_product_file_points_outside_the_repository():
    offenders = []
    for path in product_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files (manifests are text; figures would not be)
            continue
        offenders += [f"{path.relative_to(ROOT)}: {needle!r}" for needle in OUTSIDE if needle in text]
    assert not offenders, "product files referring to material outside the repository:\n" + "\n".join(offenders)


def test_every_docs_page_the_code_cites_exists():
    """Docstrings, comments and messages cite docs pages by path: each must be a page of this repository."""
    import re

    cited = {}
    for path in product_files():
        if path.suffix in (".py", ".yaml", ".yml", ".md", ".sh"):
            for page in re.findall(r"\bdocs/[\w/.-]+\.md", path.read_text(encoding="utf-8")):
                cited.setdefault(page, path.relative_to(ROOT))
    missing = {page: str(where) for page, where in cited.items() if not (ROOT / page).is_file()}
    assert len(cited) > 5 and not missing, missing


def test_the_readme_results_are_the_pipelines():
    """Every no-CRF mean +- std of reports/results_summary.json (made by `acseg-bench results`) is in the README's
    results table as it stands there, so the headline numbers are the generated ones."""
    import json

    rows = json.loads((ROOT / "reports" / "results_summary.json").read_text())["rows"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    plain = [r for r in rows if not r["crf"]]
    missing = [f"{r['dataset']} {r['method']}: {r['miou_mean']:.2f} +- {r['miou_std']:.2f}" for r in plain
               if f"{r['miou_mean']:.2f} +- {r['miou_std']:.2f}" not in readme]
    assert plain and not missing, missing
