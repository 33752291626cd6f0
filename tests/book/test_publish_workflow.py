"""The workflow that publishes the book builds it with `make book`, the command readers use locally."""

from __future__ import annotations

import yaml

from support import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def test_publish_workflow_builds_with_make_book_and_deploys_the_html():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True
    triggers = workflow.get("on", workflow.get(True))
    assert "main" in triggers["push"]["branches"]
    assert {"pages": "write", "id-token": "write"}.items() <= workflow["permissions"].items()
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = [step.get("run", "").strip() for step in build["steps"]]
    assert "make book" in runs
    uses = {step.get("uses", "").split("@")[0]: step for step in build["steps"]}
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["environment"]["name"] == "github-pages"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in deploy["steps"])
    # the build's output folder is the one `make book` writes (jupyter-book builds into _build/html)
    makefile = (ROOT / "Makefile").read_text()
    assert "jupyter-book build ." in makefile.split("\nbook:", 1)[1].split("\n\n", 1)[0]
