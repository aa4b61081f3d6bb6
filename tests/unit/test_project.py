"""Projects: .vorteilproject targets, ignore globs that really ignore, extra files, symlinks."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from imagekit.errors import UserError
from imagekit.project import (
    MAX_PROJECT_FILE,
    IgnoreRules,
    Project,
    Target,
    load_project,
    split_spec,
)

TWO_TARGETS = """
ignore = ["*.log"]

[[target]]
name = "prod"
vcfgs = ["default.vcfg", "prod.vcfg"]
icon = "icon.png"
files = ["extra/tool"]

[[target]]
name = "dev"
vcfgs = ["default.vcfg"]
"""


def _tree(root: Path, *files: str) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def _project(root: Path, text: str, *files: str) -> Project:
    _tree(root, "default.vcfg", *files)
    (root / ".vorteilproject").write_text(text)
    return load_project(root)


def _dests(project: Project, target: str | None = None) -> list[str]:
    return [str(entry.dest) for entry in project.files(project.target(target))]


def _ignoring(root: Path, patterns: list[str], *files: str) -> list[str]:
    text = f"ignore = {patterns!r}\n[[target]]\nname = 't'\nvcfgs = ['default.vcfg']\n"
    return _dests(_project(root, text, *files))


def _error(root: Path, text: str) -> str:
    with pytest.raises(UserError) as caught:
        _project(root, text)
    return caught.value.message


def test_targets_are_read_in_order(tmp_path: Path) -> None:
    """Each [[target]] keeps its name, vcfgs, icon and files; the first is the default."""
    project = _project(tmp_path, TWO_TARGETS, "prod.vcfg", "extra/tool")
    assert project.root == tmp_path.resolve()
    assert project.ignore == ("*.log",)
    assert project.target(None) == Target(
        "prod", ("default.vcfg", "prod.vcfg"), "icon.png", ("extra/tool",)
    )
    assert project.target("dev") == Target("dev", ("default.vcfg",))
    assert project.vcfg_paths(project.target(None)) == [
        tmp_path.resolve() / "default.vcfg",
        tmp_path.resolve() / "prod.vcfg",
    ]


def test_unknown_target_names_the_known_ones(tmp_path: Path) -> None:
    """Asking for a target that does not exist lists the targets in the hint."""
    project = _project(tmp_path, TWO_TARGETS, "prod.vcfg", "extra/tool")
    with pytest.raises(UserError) as caught:
        project.target("staging")
    assert "no target named 'staging'" in caught.value.message
    assert caught.value.hint == "targets: prod, dev"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("proj", (Path("proj"), None)),
        ("proj:dev", (Path("proj"), "dev")),
        ("a/b:c:dev", (Path("a/b:c"), "dev")),
        (":dev", (Path("."), "dev")),
        ("proj:", (Path("proj"), None)),
    ],
)
def test_split_spec(spec: str, expected: tuple[Path, str | None]) -> None:
    """DIR or DIR:TARGET; the target is after the last ':'."""
    assert split_spec(spec) == expected


def test_split_spec_keeps_a_directory_whose_name_holds_a_colon(tmp_path: Path) -> None:
    """An existing directory named 'a:b' is a directory, not a:TARGET."""
    directory = tmp_path / "a:b"
    directory.mkdir()
    assert split_spec(str(directory)) == (directory, None)


def test_implicit_project_with_only_default_vcfg(tmp_path: Path) -> None:
    """A directory with default.vcfg and no .vorteilproject has one target, default."""
    _tree(tmp_path, "default.vcfg", "app")
    project = load_project(tmp_path)
    assert project.targets == (Target("default", ("default.vcfg",)),)
    assert project.ignore == ()


def test_a_directory_without_project_or_vcfg_is_not_a_project(tmp_path: Path) -> None:
    """Neither .vorteilproject nor default.vcfg: a clear error with a hint."""
    with pytest.raises(UserError) as caught:
        load_project(tmp_path)
    assert "not a project" in caught.value.message
    assert caught.value.hint is not None


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A project path that does not exist is named in the error."""
    with pytest.raises(UserError, match="no such project directory"):
        load_project(tmp_path / "missing")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('ignore = []\ncolour = "red"\n[[target]]\nname = "a"', "unknown key 'colour'"),
        ('[[target]]\nname = "a"\nvcfg = ["x"]', "target[0]: unknown key 'vcfg'"),
        ('ignore = "*.log"\n[[target]]\nname = "a"', "ignore: expected a list of strings"),
        ("ignore = [1]\n[[target]]\nname = 'a'", "ignore: expected a list of strings"),
        ('[[target]]\nname = "a"\nvcfgs = "default.vcfg"', "target[0].vcfgs: expected a list"),
        ('[[target]]\nname = "a"\nfiles = [1]', "target[0].files: expected a list"),
        ("[[target]]\nname = 5", "target[0].name: expected a non-empty name"),
        ('[[target]]\nname = ""', "target[0].name: expected a non-empty name"),
        ('[[target]]\nname = "a:b"', "without ':'"),
        ('[[target]]\nname = "a"\nicon = 1', "target[0].icon: expected a string"),
        ('[[target]]\nname = "a"\n[[target]]\nname = "a"', "target[1].name: target 'a' is defined"),
        ('ignore = ["*.log"]', "no [[target]]"),
        ('[target]\nname = "a"', "no [[target]]"),
        ('target = "a"', "no [[target]]"),
        ("target = [1]", "target[0]: expected a table"),
        ("[[target]\n", "not valid TOML"),
        ('ignore = ["!keep.log"]\n[[target]]\nname = "a"', "ignore[0]: unsupported pattern"),
        ('ignore = [""]\n[[target]]\nname = "a"', "ignore[0]: unsupported pattern"),
    ],
)
def test_bad_project_files(tmp_path: Path, text: str, fragment: str) -> None:
    """Unknown keys, wrong types, bad names and bad patterns name the file and field."""
    message = _error(tmp_path, text)
    assert str(tmp_path / ".vorteilproject") in message
    assert fragment in message


def test_project_file_must_be_utf8(tmp_path: Path) -> None:
    """A .vorteilproject that is not UTF-8 is not valid TOML."""
    (tmp_path / ".vorteilproject").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not valid TOML"):
        load_project(tmp_path)


def test_project_file_too_large(tmp_path: Path) -> None:
    """A .vorteilproject over 64 KiB is refused before it is parsed."""
    padding = "#" * MAX_PROJECT_FILE + "\n"
    assert "larger than 65536 bytes" in _error(tmp_path, padding + '[[target]]\nname = "a"')


def test_project_file_that_is_a_directory(tmp_path: Path) -> None:
    """A .vorteilproject that cannot be read is a user error, not a traceback."""
    (tmp_path / ".vorteilproject").mkdir()
    with pytest.raises(UserError, match="cannot read"):
        load_project(tmp_path)


def test_missing_vcfg_file(tmp_path: Path) -> None:
    """A target naming a VCFG that does not exist is an error naming it."""
    project = _project(tmp_path, '[[target]]\nname = "a"\nvcfgs = ["default.vcfg", "gone.vcfg"]')
    with pytest.raises(UserError, match=r"target 'a' vcfgs: gone\.vcfg does not exist"):
        project.vcfg_paths(project.target(None))


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.vcfg", "default.vcfg", False, True),
        ("*.vcfg", "deep/er/x.vcfg", False, True),
        ("*.vcfg", "x.vcfg.bak", False, False),
        ("build/*.o", "build/a.o", False, True),
        ("build/*.o", "build/sub/a.o", False, False),
        ("build/*.o", "src/build/a.o", False, False),
        ("/secret", "secret", False, True),
        ("/secret", "src/secret", False, False),
        ("secret", "src/secret", False, True),
        ("docs/**/*.md", "docs/a.md", False, True),
        ("docs/**/*.md", "docs/x/y/b.md", False, True),
        ("docs/**/*.md", "docs/x/readme.txt", False, False),
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "cache", True, True),
        ("logs/**", "logs/x/y", False, True),
        ("logs/**", "logs", True, False),
        ("tmp/", "tmp", True, True),
        ("tmp/", "src/tmp", True, True),
        ("tmp/", "tmp", False, False),
        ("/out/", "out", True, True),
        ("/out/", "src/out", True, False),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("[ab].txt", "b.txt", False, True),
        ("[!ab].txt", "b.txt", False, False),
        ("[!ab].txt", "c.txt", False, True),
        ("a+b(c).txt", "a+b(c).txt", False, True),
    ],
)
def test_ignore_rules(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    """Globs in the spirit of .gitignore, matched on relative paths."""
    assert IgnoreRules([pattern]).ignored(PurePosixPath(path), is_dir=is_dir) is ignored


def test_ignored_files_are_not_listed(tmp_path: Path) -> None:
    """Ignored files at any depth are left out; the rest are listed, parents first."""
    dests = _ignoring(
        tmp_path,
        ["*.vcfg", "build/*.o", "/secret", "docs/**/*.md", "tmp/"],
        "app", "secret", "sub/x.vcfg", "sub/secret", "build/a.o", "build/sub/b.o",
        "docs/a.md", "docs/x/b.md", "docs/x/keep.txt", "tmp/junk", "sub/tmp/junk", "data/tmp",
    )  # fmt: skip
    assert sorted(dests) == [
        "/app", "/build", "/build/sub", "/build/sub/b.o", "/data", "/data/tmp", "/docs",
        "/docs/x", "/docs/x/keep.txt", "/sub", "/sub/secret",
    ]  # fmt: skip


def test_an_ignored_directory_hides_its_subtree(tmp_path: Path) -> None:
    """Nothing below an ignored directory is listed, whatever its name."""
    dests = _ignoring(tmp_path, ["node_modules"], "app", "node_modules/a/b.js", "x/node_modules/c")
    assert sorted(dests) == ["/app", "/default.vcfg", "/x"]


def test_project_file_is_never_listed(tmp_path: Path) -> None:
    """.vorteilproject stays out of the VM even with no ignore patterns."""
    dests = _ignoring(tmp_path, [], "app")
    assert sorted(dests) == ["/app", "/default.vcfg"]


def test_extra_files_with_and_without_dest(tmp_path: Path) -> None:
    """files entries land at /NAME, or at @dest; a directory brings its contents."""
    text = '[[target]]\nname = "a"\nfiles = ["extra/tool", "extra/README@/doc/readme", "lib@/opt"]'
    project = _project(tmp_path, text, "extra/tool", "extra/README", "lib/x.so", "lib/y/z.so")
    dests = _dests(project)
    assert dests[-6:] == ["/tool", "/doc/readme", "/opt", "/opt/y", "/opt/x.so", "/opt/y/z.so"]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [("app@relative/dest", "is not absolute"), ("nothing-here", "nothing-here does not exist")],
)
def test_bad_extra_files(tmp_path: Path, entry: str, fragment: str) -> None:
    """A files entry with a relative dest or a missing source is an error."""
    project = _project(tmp_path, f'[[target]]\nname = "a"\nfiles = ["{entry}"]', "app")
    with pytest.raises(UserError, match=fragment):
        _dests(project)


def test_symlinks_are_listed_and_not_followed(tmp_path: Path) -> None:
    """Links to files and directories are listed as links; nothing below a linked dir is."""
    _tree(tmp_path, "real/data.txt")
    (tmp_path / "to-dir").symlink_to("real")
    (tmp_path / "to-file").symlink_to("real/data.txt")
    (tmp_path / "dangling").symlink_to("gone")
    project = _project(tmp_path, '[[target]]\nname = "a"')
    entries = {str(e.dest): e.source for e in project.files(project.target(None))}
    assert sorted(entries) == [
        "/dangling", "/default.vcfg", "/real", "/real/data.txt", "/to-dir", "/to-file",
    ]  # fmt: skip
    assert all(entries[name].is_symlink() for name in ("/dangling", "/to-dir", "/to-file"))


def test_symlinked_extra_files_keep_their_name(tmp_path: Path) -> None:
    """A files entry that is a link is added as that link, under its own name, unwalked."""
    _tree(tmp_path, "real/lib.so.1", "real/sub/x")
    (tmp_path / "lib.so").symlink_to("real/lib.so.1")
    (tmp_path / "linked").symlink_to("real")
    text = '[[target]]\nname = "a"\nfiles = ["lib.so", "linked@/opt/real"]'
    project = _project(tmp_path, text)
    extra = list(project.files(project.target(None)))[-2:]
    assert [(e.source, str(e.dest)) for e in extra] == [
        (tmp_path.resolve() / "lib.so", "/lib.so"),
        (tmp_path.resolve() / "linked", "/opt/real"),
    ]
