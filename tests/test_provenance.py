"""Provenance: the commit and dirty flag beside every result, also where git is missing."""

from metalab.tools import provenance


def test_environment_records_commit_and_dirty_flag_from_git(monkeypatch):
    answers = {"rev-parse": "abc123", "status": " M README.md"}
    monkeypatch.setattr(provenance, "_git", lambda *args: answers[args[0]])
    env = provenance.environment()
    assert env["commit"] == "abc123" and env["dirty"] is True


def test_without_git_the_commit_comes_from_the_environment_and_dirty_is_unknown(monkeypatch):
    monkeypatch.setattr(provenance, "_git", lambda *args: None)
    monkeypatch.setenv("METALAB_COMMIT", "def456")
    env = provenance.environment()
    assert env["commit"] == "def456" and env["dirty"] is None
    monkeypatch.delenv("METALAB_COMMIT")
    assert provenance.environment()["commit"] is None
