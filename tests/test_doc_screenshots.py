"""conftest.doc_screenshot: artifacts on every run, docs/ only with PANCAKE_DOC_SHOTS=1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.conftest as conftest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The helper's two directories, moved into the test's own: never the checkout's docs/."""
    artifacts, docs = tmp_path / "artifacts", tmp_path / "docs"
    monkeypatch.setattr(conftest, "ARTIFACTS_DIR", artifacts)
    monkeypatch.setattr(conftest, "DOCS_DIR", docs)
    return artifacts, docs


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 320, "height": 200})
    p = context.new_page()
    p.set_content("<body style='background:#c33'><h1>pancake</h1></body>")
    yield p
    context.close()


def test_a_plain_run_writes_the_artifact_only(dirs: tuple[Path, Path], page: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    artifacts, docs = dirs
    monkeypatch.delenv(conftest.DOC_SHOTS_ENV, raising=False)
    shot = conftest.doc_screenshot(page, "shot.png")
    assert shot == artifacts / "shot.png"
    assert shot.read_bytes().startswith(PNG)
    assert not docs.exists()
    monkeypatch.setenv(conftest.DOC_SHOTS_ENV, "0")
    conftest.doc_screenshot(page, "shot.png")
    assert not docs.exists()


def test_doc_shots_write_the_same_picture_into_docs(dirs: tuple[Path, Path], page: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    artifacts, docs = dirs
    monkeypatch.setenv(conftest.DOC_SHOTS_ENV, "1")
    conftest.doc_screenshot(page, "full.png", full_page=True)
    assert (docs / "full.png").read_bytes() == (artifacts / "full.png").read_bytes()
    assert (docs / "full.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("bad", ["", "../x.png", "sub/x.png", ".hidden.png"])
def test_a_name_is_a_plain_file_name(dirs: tuple[Path, Path], bad: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        conftest.doc_screenshot(object(), bad)
    assert not dirs[0].exists() and not dirs[1].exists()
