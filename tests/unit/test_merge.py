"""Merging VCFG files: vorteil's per-field rules and the record of which file set what."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagekit.merge import Sources, merge, merge_all, source_of
from imagekit.vcfgfile import parse_vcfg_text
from vinitd.vcfg.model import VCFG, Privilege, Program, StdoutMode, System, TerminateSignal
from vinitd.vcfg.values import Bytes


def _vcfg(text: str) -> VCFG:
    return parse_vcfg_text(text, source="test.vcfg")


def _merged(*texts: str) -> tuple[VCFG, Sources]:
    return merge_all([(f"{index}.vcfg", _vcfg(text)) for index, text in enumerate(texts, 1)])


@pytest.mark.parametrize(
    ("section", "first", "second"),
    [
        ("program", 'binary = "/a"', 'args = "x"'),
        ("network", 'ip = "10.0.0.2"', "mtu = 9000"),
        ("nfs", 'mount = "/a"', 'server = "h:/x"'),
        ("route", 'interface = "eth0"', 'gateway = "10.0.0.1"'),
        ("logging", 'type = "system"', 'config = ["A=1"]'),
    ],
)
def test_by_index_merges_entries_and_appends_extra_ones(
    section: str, first: str, second: str
) -> None:
    """Entry N of a later file merges into entry N; entries beyond the earlier count append."""
    merged, _ = _merged(
        f"[[{section}]]\n{first}\n",
        f"[[{section}]]\n{second}\n[[{section}]]\n{second}\n",
    )
    both = getattr(_vcfg(f"[[{section}]]\n{first}\n{second}\n"), section)[0]
    extra = getattr(_vcfg(f"[[{section}]]\n{second}\n"), section)[0]
    assert getattr(merged, section) == (both, extra)


def test_by_index_keeps_fields_the_later_entry_leaves_empty() -> None:
    """A later program that sets only args keeps the earlier binary and cwd."""
    merged, _ = _merged(
        '[[program]]\nbinary = "/a"\ncwd = "/srv"\n', '[[program]]\nargs = "--flag"\n'
    )
    program = merged.program[0]
    assert (program.binary, program.args, program.cwd) == ("/a", "--flag", "/srv")


def test_program_scalars_override_when_non_empty() -> None:
    """privilege, terminate and strace from a later file replace the earlier values."""
    merged, _ = _merged(
        '[[program]]\nbinary = "/a"\nprivilege = "user"\nterminate = "SIGINT"\n',
        '[[program]]\nprivilege = "superuser"\nterminate = "SIGQUIT"\nstrace = true\n',
    )
    program = merged.program[0]
    assert program.privilege is Privilege.SUPERUSER
    assert program.terminate is TerminateSignal.SIGQUIT
    assert program.strace


def test_env_and_bootstrap_concatenate() -> None:
    """env and bootstrap lists are concatenated, duplicates kept, earlier items first."""
    merged, _ = _merged(
        '[[program]]\nenv = ["A=1", "B=2"]\nbootstrap = ["SLEEP 1"]\n',
        '[[program]]\nenv = ["A=1", "C=3"]\nbootstrap = ["SLEEP 1", "SLEEP 2"]\n',
    )
    assert merged.program[0].env == ("A=1", "B=2", "A=1", "C=3")
    assert merged.program[0].bootstrap == ("SLEEP 1", "SLEEP 1", "SLEEP 2")


def test_logging_config_concatenates() -> None:
    """A logging entry's config lines are concatenated like env."""
    merged, _ = _merged('[[logging]]\nconfig = ["A=1"]\n', '[[logging]]\nconfig = ["A=1", "B=2"]\n')
    assert merged.logging[0].config == ("A=1", "A=1", "B=2")


@pytest.mark.parametrize(
    ("table", "key", "read"),
    [
        ("[[program]]", "logfiles", lambda v: v.program[0].logfiles),
        ("[[network]]", "udp", lambda v: v.network[0].udp),
        ("[[network]]", "tcp", lambda v: v.network[0].tcp),
        ("[[network]]", "http", lambda v: v.network[0].http),
        ("[[network]]", "https", lambda v: v.network[0].https),
        ("[system]", "dns", lambda v: v.system.dns),
        ("[system]", "ntp", lambda v: v.system.ntp),
    ],
)
def test_union_lists_drop_duplicates_and_keep_order(
    table: str, key: str, read: Callable[[VCFG], tuple[str, ...]]
) -> None:
    """logfiles, port lists, dns and ntp are unioned: first-seen order, no duplicates."""
    merged, _ = _merged(
        f'{table}\n{key} = ["x", "y", "x"]\n', f'{table}\n{key} = ["z", "y", "w"]\n'
    )
    assert read(merged) == ("x", "y", "z", "w")


def test_tilde_deletes_the_latest_earlier_item_and_itself() -> None:
    """'~A=1' removes the last earlier 'A=1' only, and is not kept."""
    merged, _ = _merged(
        '[[program]]\nenv = ["A=1", "B=2", "A=1"]\n', '[[program]]\nenv = ["~A=1", "C=3"]\n'
    )
    assert merged.program[0].env == ("A=1", "B=2", "C=3")


def test_tilde_with_nothing_to_delete_disappears() -> None:
    """A '~X' with no earlier X leaves the list as it was and is dropped."""
    merged, _ = _merged('[system]\ndns = ["1.1.1.1"]\n', '[system]\ndns = ["~9.9.9.9"]\n')
    assert merged.system.dns == ("1.1.1.1",)
    alone, _ = _merged('[[program]]\nbinary = "/a"\nbootstrap = ["~SLEEP 1"]\n')
    assert alone.program[0].bootstrap == ()


def test_tilde_deletes_an_item_added_earlier_in_the_same_list() -> None:
    """Within one file, '~X' after X deletes it; it works in union lists too."""
    merged, _ = _merged(
        '[[network]]\nhttp = ["80"]\n', '[[network]]\nhttp = ["8080", "~8080", "~80"]\n'
    )
    assert merged.network[0].http == ()


@pytest.mark.parametrize(
    ("key", "first", "second", "read", "expected"),
    [
        ("hostname", '"a"', '"b"', lambda v: v.system.hostname, "b"),
        ("max-fds", "10", "20", lambda v: v.system.max_fds, 20),
        ("output-mode", '"screen"', '"serial"', lambda v: v.system.stdout_mode, StdoutMode.SERIAL),
        ("kernel-args", '"a"', '"b"', lambda v: v.system.kernel_args, "b"),
        ("filesystem", '"ext2"', '"ext4"', lambda v: v.system.filesystem, "ext4"),
        ("user", '"a"', '"b"', lambda v: v.system.user, "b"),
        ("terminate-wait", "1", "2", lambda v: v.system.terminate_wait, 2),
    ],
)
def test_system_non_empty_overrides_and_empty_does_not(
    key: str, first: str, second: str, read: Callable[[VCFG], object], expected: object
) -> None:
    """A later non-empty [system] value wins; a later file without the key keeps the earlier."""
    merged, _ = _merged(f"[system]\n{key} = {first}\n", f"[system]\n{key} = {second}\n")
    assert read(merged) == expected
    kept, _ = _merged(f"[system]\n{key} = {second}\n", '[system]\nhostname = ""\n')
    assert read(kept) == expected


@pytest.mark.parametrize(
    ("key", "first", "second", "read", "expected"),
    [
        ("cpus", "1", "4", lambda v: v.vm.cpus, 4),
        ("ram", '"128 MiB"', '"1 GiB"', lambda v: v.vm.ram, Bytes.mib(1024)),
        ("inodes", "10", "20", lambda v: v.vm.inodes, 20),
        ("kernel", '"20.01"', '"21.03"', lambda v: v.vm.kernel, "21.03"),
        ("disk-size", '"1 GiB"', '"+64 MiB"', lambda v: v.vm.disk_size, Bytes.mib(64, delta=True)),
    ],
)
def test_vm_non_empty_overrides_and_empty_does_not(
    key: str, first: str, second: str, read: Callable[[VCFG], object], expected: object
) -> None:
    """A later non-empty [vm] value wins; zero or an empty size in a later file does not."""
    merged, _ = _merged(f"[vm]\n{key} = {first}\n", f"[vm]\n{key} = {second}\n")
    assert read(merged) == expected
    kept, _ = _merged(f"[vm]\n{key} = {second}\n", '[vm]\ncpus = 0\nram = ""\ndisk-size = ""\n')
    assert read(kept) == expected


@pytest.mark.parametrize("key", ["name", "author", "summary", "description", "url", "version"])
def test_info_first_writer_wins(key: str) -> None:
    """[info] keeps the first non-empty value; a later file only fills what is still empty."""
    merged, sources = _merged(f'[info]\n{key} = "first"\n', f'[info]\n{key} = "second"\n')
    assert getattr(merged.info, key) == "first"
    assert sources[f"info.{key}"] == "1.vcfg"
    filled, _ = _merged("[info]\n", f'[info]\n{key} = "second"\n')
    assert getattr(filled.info, key) == "second"


def test_info_date_first_writer_wins() -> None:
    """The first file's date stays, in the format it was written."""
    merged, _ = _merged('[info]\ndate = "2021-03-01"\n', '[info]\ndate = "2022-01-01"\n')
    assert merged.info.date.text == "2021-03-01"


def test_sysctl_keys_override_and_union() -> None:
    """[sysctl] merges key by key: a later value replaces, other keys stay."""
    merged, sources = _merged(
        '[sysctl]\n"a.b" = "1"\n"c.d" = "2"\n', '[sysctl]\n"a.b" = "3"\n"e.f" = "4"\n'
    )
    assert dict(merged.sysctl) == {"a.b": "3", "c.d": "2", "e.f": "4"}
    assert (sources["sysctl[a.b]"], sources["sysctl[c.d]"]) == ("2.vcfg", "1.vcfg")


def test_sources_name_the_file_behind_each_path() -> None:
    """sources maps each field path, appended entry and list item to the file that wrote it."""
    _, sources = _merged(
        '[[program]]\nbinary = "/a"\nenv = ["A=1"]\n[system]\ndns = ["1.1.1.1"]\n',
        '[[program]]\nenv = ["B=2"]\n[[program]]\nargs = "/b"\n[system]\ndns = ["8.8.8.8"]\n',
    )
    assert sources == {
        "program[0]": "1.vcfg",
        "program[0].binary": "1.vcfg",
        "program[0].env": "2.vcfg",
        "program[0].env[0]": "1.vcfg",
        "program[0].env[1]": "2.vcfg",
        "program[1]": "2.vcfg",
        "program[1].args": "2.vcfg",
        "system.dns": "2.vcfg",
        "system.dns[0]": "1.vcfg",
        "system.dns[1]": "2.vcfg",
    }


def test_item_sources_follow_deletions() -> None:
    """After '~X' removes an item, the items behind it keep the file that wrote them."""
    _, sources = _merged('[system]\nntp = ["a", "b"]\n', '[system]\nntp = ["~a", "c"]\n')
    assert (sources["system.ntp[0]"], sources["system.ntp[1]"]) == ("1.vcfg", "2.vcfg")
    assert "system.ntp[2]" not in sources


def test_merge_updates_the_given_sources_in_place() -> None:
    """merge() returns the merged config and records the later file's paths."""
    sources: Sources = {}
    merged = merge(VCFG(), _vcfg("[vm]\ncpus = 2\n"), source="x.vcfg", sources=sources)
    assert merged.vm.cpus == 2
    assert sources == {"vm.cpus": "x.vcfg"}


def test_items_of_an_unrecorded_base_get_no_source() -> None:
    """Over a base with no recorded sources, only the later file's items are attributed."""
    sources: Sources = {}
    base = VCFG(system=System(dns=("1.1.1.1",)))
    merge(base, VCFG(system=System(dns=("8.8.8.8",))), source="b.vcfg", sources=sources)
    assert sources == {"system.dns": "b.vcfg", "system.dns[1]": "b.vcfg"}


def test_merging_an_empty_file_changes_nothing() -> None:
    """An empty later file leaves the config and the sources as they were."""
    base, sources = _merged('[[program]]\nbinary = "/a"\n[sysctl]\n"a.b" = "1"\n')
    before = dict(sources)
    assert merge(base, VCFG(), source="empty.vcfg", sources=sources) == base
    assert sources == before


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("program[0].bootstrap[1]", "2.vcfg"),
        ("program[0].env[0]", "1.vcfg"),
        ("program[0].cwd", "1.vcfg"),
        ("program[0]", "1.vcfg"),
        ("system", "2.vcfg"),
        ("sysctl[net.core.somaxconn]", "2.vcfg"),
        ("vm.ram", None),
        ("", None),
    ],
)
def test_source_of(path: str, expected: str | None) -> None:
    """The exact path, else its nearest recorded parent, else the last path set below it."""
    _, sources = _merged(
        '[[program]]\nbinary = "/a"\nenv = ["A=1"]\n',
        '[[program]]\nbootstrap = ["SLEEP 1", "SLEEP x"]\n[system]\nuser = "svc"\n'
        '[sysctl]\n"net.core.somaxconn" = "1"\n',
    )
    assert source_of(sources, path) == expected


def _reference(old: list[str], new: list[str], *, union: bool) -> list[str]:
    result = list(old)
    for item in new:
        if item.startswith("~"):
            if item[1:] in result:
                last = len(result) - 1 - result[::-1].index(item[1:])
                result.pop(last)
        elif not union or item not in result:
            result.append(item)
    return result


_ITEMS = st.lists(st.sampled_from(["a", "b", "c", "~a", "~b", "~c"]), max_size=8)


@given(first=_ITEMS, second=_ITEMS)
def test_concat_and_tilde_match_a_reference_model(first: list[str], second: list[str]) -> None:
    """env merging (concat with '~X') agrees with a plain list model over two files."""
    files = [
        (name, VCFG(program=(Program(env=tuple(items)),)))
        for name, items in [("1", first), ("2", second)]
    ]
    merged, _ = merge_all(files)
    expected = _reference(_reference([], first, union=False), second, union=False)
    assert list(merged.program[0].env) == expected


@given(first=_ITEMS, second=_ITEMS)
def test_union_and_tilde_match_a_reference_model(first: list[str], second: list[str]) -> None:
    """dns merging (union with '~X') agrees with the model and never holds a duplicate."""
    files = [
        (name, VCFG(system=System(dns=tuple(items))))
        for name, items in [("1", first), ("2", second)]
    ]
    merged, _ = merge_all(files)
    expected = _reference(_reference([], first, union=True), second, union=True)
    assert list(merged.system.dns) == expected
    assert len(set(merged.system.dns)) == len(merged.system.dns)


@given(lists=st.lists(st.lists(st.text(min_size=1).filter(lambda s: s[0] != "~")), max_size=4))
def test_union_of_plain_lists_is_first_seen_order(lists: list[list[str]]) -> None:
    """Without '~', the union of any string lists is their items in first-seen order."""
    configs = [
        (str(index), VCFG(system=System(dns=tuple(items)))) for index, items in enumerate(lists)
    ]
    merged, _ = merge_all(configs)
    assert list(merged.system.dns) == list(dict.fromkeys(i for items in lists for i in items))
