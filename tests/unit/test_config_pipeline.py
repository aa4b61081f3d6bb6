"""config.resolve end to end: project targets and --vcfg files to the validated on-disk VCFG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagekit import config
from imagekit.errors import InvalidConfig, UserError
from vinitd.vcfg.model import Privilege

APP = '[[program]]\nbinary = "/app"\n'

PROJECT = """
[[target]]
name = "default"
vcfgs = ["base.vcfg", "net.vcfg"]

[[target]]
name = "debug"
vcfgs = ["base.vcfg", "net.vcfg", "debug.vcfg"]
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(text)
    return root.resolve()


def _project(root: Path, base: str, net: str, debug: str = "") -> Path:
    files = {".vorteilproject": PROJECT, "base.vcfg": base, "net.vcfg": net, "debug.vcfg": debug}
    return _write(root, files)


def _invalid(spec: str | None, extra: tuple[Path, ...] = ()) -> list[str]:
    with pytest.raises(InvalidConfig) as caught:
        config.resolve(spec, extra)
    return caught.value.problems


def test_implicit_project_renders_the_on_disk_json(tmp_path: Path) -> None:
    """A directory with default.vcfg resolves to the filled, valid on-disk JSON."""
    root = _write(tmp_path, {"default.vcfg": APP + '[info]\nname = "Hello World"\n'})
    resolved = config.resolve(str(tmp_path))
    document = json.loads(resolved.json())
    assert document["program"][0]["binary"] == "/app"
    assert document["system"]["hostname"] == "hello-world-$SALT"
    assert resolved.files == (root / "default.vcfg",)
    assert resolved.target is not None and resolved.target.name == "default"
    assert resolved.merged.system.hostname == ""


def test_target_files_merge_in_order(tmp_path: Path) -> None:
    """The default target's files merge in order; later values win, lists combine."""
    root = _project(
        tmp_path,
        APP + 'env = ["A=1"]\n[system]\ndns = ["1.1.1.1"]\n',
        '[[program]]\nenv = ["B=2"]\nprivilege = "user"\n[[network]]\nhttp = ["8080"]\n',
    )
    resolved = config.resolve(str(tmp_path))
    program = resolved.vcfg.program[0]
    assert (program.binary, program.env, program.privilege) == (
        "/app",
        ("A=1", "B=2"),
        Privilege.USER,
    )
    assert resolved.vcfg.network[0].http == ("8080",)
    assert resolved.files == (root / "base.vcfg", root / "net.vcfg")
    assert resolved.sources["program[0].privilege"] == str(root / "net.vcfg")


def test_dir_colon_target_picks_another_target(tmp_path: Path) -> None:
    """DIR:TARGET merges that target's files."""
    _project(tmp_path, APP, "", "[[program]]\nstrace = true\n[vm]\ncpus = 4\n")
    resolved = config.resolve(f"{tmp_path}:debug")
    assert resolved.vcfg.program[0].strace
    assert resolved.vcfg.vm.cpus == 4
    assert config.resolve(str(tmp_path)).vcfg.vm.cpus == 1


def test_unknown_target_is_a_user_error(tmp_path: Path) -> None:
    """A DIR:TARGET naming no target is a UserError listing the targets."""
    _project(tmp_path, APP, "")
    with pytest.raises(UserError) as caught:
        config.resolve(f"{tmp_path}:staging")
    assert caught.value.hint == "targets: default, debug"


def test_extra_vcfgs_merge_after_the_target(tmp_path: Path) -> None:
    """--vcfg files come after the target's own files, so they override them."""
    root = _project(tmp_path, APP + '[system]\nuser = "svc"\n', "")
    extra = _write(tmp_path, {"over.vcfg": '[system]\nuser = "ops"\n'}) / "over.vcfg"
    resolved = config.resolve(str(tmp_path), [extra])
    assert resolved.vcfg.system.user == "ops"
    assert resolved.files[-1] == extra
    assert resolved.sources["system.user"] == str(extra)
    assert resolved.files[0] == root / "base.vcfg"


def test_extra_vcfgs_alone(tmp_path: Path) -> None:
    """Without a project, the --vcfg files alone make the config."""
    root = _write(tmp_path, {"a.vcfg": APP, "b.vcfg": "[vm]\ncpus = 2\n"})
    resolved = config.resolve(None, [root / "a.vcfg", root / "b.vcfg"])
    assert resolved.project is None and resolved.target is None
    assert resolved.vcfg.vm.cpus == 2


def test_nothing_to_read_is_a_user_error() -> None:
    """No project and no --vcfg: a UserError with a hint."""
    with pytest.raises(UserError, match="no VCFG to read"):
        config.resolve(None)


def test_a_bad_field_names_the_file_that_set_it(tmp_path: Path) -> None:
    """A bad mask written in the second file is reported against the second file."""
    root = _project(
        tmp_path,
        APP + '[[network]]\nip = "10.0.0.2"\nmask = "255.255.255.0"\ngateway = "10.0.0.1"\n',
        '[[network]]\nmask = "255.0.255.0"\n',
    )
    [problem] = _invalid(str(tmp_path))
    assert problem.startswith(f"{root / 'net.vcfg'}: network[0].mask: '255.0.255.0'")


def test_a_bad_list_item_names_the_file_that_wrote_it(tmp_path: Path) -> None:
    """A bad dns entry from the first file names the first file though the second adds one."""
    root = _project(
        tmp_path, APP + '[system]\ndns = ["dns.example"]\n', '[system]\ndns = ["1.1.1.1"]\n'
    )
    [problem] = _invalid(str(tmp_path))
    assert problem.startswith(f"{root / 'base.vcfg'}: system.dns[0]: 'dns.example'")


def test_a_bad_appended_entry_names_its_file(tmp_path: Path) -> None:
    """A program entry added by the second file without a binary names the second file."""
    root = _project(tmp_path, APP, '[[program]]\nbinary = "/b"\n[[program]]\ncwd = "/"\n')
    [problem] = _invalid(str(tmp_path))
    assert problem.startswith(f"{root / 'net.vcfg'}: program[1]: missing binary and arguments")


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    """Every problem of the merged config is in one InvalidConfig, each naming its file."""
    root = _project(
        tmp_path,
        APP + 'bootstrap = ["SLEEP 1", "WAIT_PORT"]\n[system]\nfilesystem = "xfs"\n',
        '[[program]]\ncwd = "srv"\n[sysctl]\n"bad key" = "1"\n',
    )
    problems = _invalid(str(tmp_path))
    base, net = root / "base.vcfg", root / "net.vcfg"
    assert [p.split(": ")[:2] for p in problems] == [
        [str(net), "program[0].cwd"],
        [str(base), "program[0].bootstrap[1]"],
        [str(base), "system.filesystem"],
        [str(net), "sysctl[bad key]"],
    ]


def test_invalid_config_message_lists_every_problem(tmp_path: Path) -> None:
    """The message has a heading with the count and one indented line per problem."""
    _write(tmp_path, {"default.vcfg": '[[program]]\ncwd = "x"\n'})
    with pytest.raises(InvalidConfig) as caught:
        config.resolve(str(tmp_path))
    error = caught.value
    assert isinstance(error, UserError)
    assert error.exit_status == 2
    lines = error.message.splitlines()
    assert lines[0] == "invalid VCFG (2 problems):"
    assert lines[1:] == [f"  {problem}" for problem in error.problems]


def test_unreadable_files_are_all_reported(tmp_path: Path) -> None:
    """Decoding errors of several files, and a missing --vcfg file, come back together."""
    root = _project(tmp_path, "[[program]\n", '[[program]]\nbinaryy = "/a"\n')
    problems = _invalid(str(tmp_path), (tmp_path / "missing.vcfg",))
    assert len(problems) == 3
    assert problems[0].startswith(f"{root / 'base.vcfg'}: not valid TOML")
    assert problems[1].startswith(f"{root / 'net.vcfg'}: program[0]: unknown key 'binaryy'")
    assert problems[2] == f"{tmp_path / 'missing.vcfg'}: no such file"


def test_a_missing_target_vcfg_is_a_user_error(tmp_path: Path) -> None:
    """A target naming a file that does not exist fails before anything is merged."""
    _write(tmp_path, {".vorteilproject": PROJECT, "base.vcfg": APP})
    with pytest.raises(UserError, match=r"net\.vcfg does not exist"):
        config.resolve(str(tmp_path))


def test_defaults_do_not_hide_user_values(tmp_path: Path) -> None:
    """Values set in the files survive the default layers; unset ones are filled."""
    _write(tmp_path, {"default.vcfg": APP + '[vm]\nram = "512 MiB"\n[system]\nmax-fds = 4096\n'})
    resolved = config.resolve(str(tmp_path))
    assert resolved.vcfg.vm.ram.mebibytes == 512
    assert resolved.vcfg.system.max_fds == 4096
    assert resolved.vcfg.system.terminate_wait == 3000
