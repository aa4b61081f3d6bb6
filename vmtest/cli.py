"""The ``vmtest`` command line.

    vmtest run IMAGE [--scenario FILE] [--boot direct] [--accel auto|kvm|tcg] [--timeout S]
                     [--junit FILE] [--artifacts DIR] [--json] [--console]
    vmtest debug IMAGE [--accel auto|kvm|tcg] [--gdb PORT] [--pause-before STAGE]

``run`` boots IMAGE, follows every stage, performs the scenario's actions and checks its
expectations (by default: every stage finishes in order, every program runs without
failing, the VM powers off cleanly), then prints the stage timeline, the programs and the
checks. A repro bundle (`vmtest.repro`) goes to ``--artifacts`` always, or on failure to a
temporary directory whose path is printed.

Exit status: 0 the run passed; 1 it failed, or the host lacks something (QEMU, KVM);
2 bad input (arguments, image, scenario file, an occupied port). Errors are one line and a
hint; ``--debug`` adds the traceback and debug logs. No QEMU outlives the command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from imagekit.errors import ImagekitError
from vinitd.errors import VinitdError
from vmtest import repro, runner
from vmtest import scenario as scenarios
from vmtest.accel import Accel
from vmtest.command import Argument, Protocol, port_is_free
from vmtest.debugger import DebugSession
from vmtest.errors import (
    AcceleratorUnavailable,
    BootModeUnavailable,
    ImageUnsupported,
    MachineOptionError,
    ScenarioError,
    VmtestError,
)
from vmtest.events import STAGES
from vmtest.failures import QemuStartFailed
from vmtest.machine import BootMode, Machine
from vmtest.process import QEMU
from vmtest.report import Report, judge, junit_xml, render_text

log = logging.getLogger("vmtest")

Handler = Callable[[argparse.Namespace], int]
QEMU_HINT = "apt-get install qemu-system-x86"


class CliError(Exception):
    """One line for the user, an optional hint, and the exit status."""

    def __init__(self, message: str, *, hint: str | None = None, status: int = 2) -> None:
        self.message = message
        self.hint = hint
        self.status = status
        super().__init__(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if _shows_progress(args):  # a person waits at a terminal: each step as it happens
        logging.getLogger("vmtest.machine").setLevel(logging.INFO)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except CliError as err:
        return _report(args, err.message, err.hint, err.status)
    except (ScenarioError, ImageUnsupported, MachineOptionError, BootModeUnavailable) as err:
        return _report(args, str(err), getattr(err, "hint", None), 2)
    except AcceleratorUnavailable as err:
        return _report(args, str(err), "use --accel auto (falls back to tcg) or --accel tcg", 1)
    except QemuStartFailed as err:
        return _report(args, err.summary, err.hint, 1)
    except ImagekitError as err:
        return _report(args, err.message, err.hint, err.exit_status)
    except VinitdError as err:
        return _report(args, str(err), None, 2)
    except VmtestError as err:
        return _report(args, str(err), None, 1)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return _report(args, f"{where}{err.strerror or err}", None, 1)
    except KeyboardInterrupt:
        print("vmtest: interrupted", file=sys.stderr)
        return 130


def _shows_progress(args: argparse.Namespace) -> bool:
    """``run`` at a terminal, unless the console streams already or -v/--debug log more."""
    if getattr(args, "handler", None) is not _run or args.console:
        return False
    return not (args.debug or args.verbose) and sys.stderr.isatty()


def _report(args: argparse.Namespace, message: str, hint: str | None, status: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"vmtest: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtest",
        description="Boot a vorteil image in QEMU and check each stage of its boot.",
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log each step"
    )
    common.add_argument(
        "--accel",
        choices=[accel.value for accel in Accel],
        default=Accel.AUTO.value,
        help="auto: KVM if a probe boot works under it, else TCG (emulation)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="boot an image and check its stages, programs and power-off",
        description="Boot IMAGE, follow its stages, act and check as the scenario says "
        "(by default: every stage finishes in order, every program runs without failing, "
        "the VM powers off cleanly). Exit status 0 pass, 1 fail, 2 bad input.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    run.add_argument("image", type=Path, metavar="IMAGE", help="raw disk image built by imagekit")
    run.add_argument("--scenario", type=Path, metavar="FILE", help="scenario file (TOML)")
    run.add_argument(
        "--boot", choices=[BootMode.DIRECT.value], default=BootMode.DIRECT.value, help="boot mode"
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help=f"deadline of the whole run (default: {runner.DEFAULT_TIMEOUT:g} s under KVM, "
        "x3 under TCG)",
    )
    run.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    run.add_argument(
        "--artifacts",
        type=Path,
        metavar="DIR",
        help="write the repro bundle here, pass or fail (default: a temporary directory, "
        "on failure only)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON report")
    run.add_argument(
        "--console",
        action="store_true",
        help="stream the serial console live (to stdout; to stderr with --json)",
    )
    run.set_defaults(handler=_run)

    debug = commands.add_parser(
        "debug",
        help="boot an image interactively: console, QMP commands, gdb",
        description="Boot IMAGE with the console on stdout. Lines typed on stdin: ':COMMAND "
        "[JSON arguments]' runs a QMP command (:query-status, :system_powerdown, :cont), "
        "':quit' kills QEMU, anything else goes to the serial console.",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    debug.add_argument("image", type=Path, metavar="IMAGE", help="raw disk image")
    debug.add_argument(
        "--gdb", type=int, metavar="PORT", help="gdb stub on 127.0.0.1:PORT; QEMU starts paused"
    )
    debug.add_argument(
        "--pause-before",
        choices=STAGES,
        metavar="STAGE",
        help=f"stop the VM as this stage starts ({', '.join(STAGES)})",
    )
    debug.set_defaults(handler=_debug)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def require_qemu() -> None:
    if shutil.which(QEMU) is None:
        raise CliError(f"{QEMU} not found on PATH", hint=QEMU_HINT, status=1)


def _run(args: argparse.Namespace) -> int:
    plan = scenarios.load(args.scenario) if args.scenario is not None else scenarios.Scenario()
    _check_output(args.junit, "--junit")
    if args.artifacts is not None and args.artifacts.exists() and not args.artifacts.is_dir():
        raise CliError(f"--artifacts {args.artifacts}: exists and is not a directory")
    require_qemu()
    keep = args.artifacts is not None
    workdir = args.artifacts.resolve() if keep else Path(tempfile.mkdtemp(prefix="vmtest-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    kept = keep
    try:
        vm = runner.prepare(args.image, plan, workdir=workdir, accel=args.accel, boot=args.boot)
        with contextlib.closing(vm):
            report = _execute(vm, plan, args)
            if keep or not report.passed:
                bundle = repro.snapshot(vm, report.failure)
                report = replace(report, artifacts=repro.write(bundle, workdir))
                kept = True
    finally:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
    write_outputs(report, junit=args.junit, as_json=args.json)
    return 0 if report.passed else 1


def _execute(vm: Machine, plan: scenarios.Scenario, args: argparse.Namespace) -> Report:
    live = None
    if args.console:
        live = sys.stderr if args.json else sys.stdout
    record = runner.execute(vm, plan, timeout=args.timeout, console=live)
    return judge(record, plan)


def _check_output(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written, before the boot."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"{option} {path}: is a directory")
    parent = path.parent if str(path.parent) else Path()
    if not parent.is_dir():
        raise CliError(f"{option} {path}: no directory {parent}")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{option} {path}: cannot write in {parent}")


def write_outputs(report: Report, *, junit: Path | None, as_json: bool) -> None:
    """The JUnit file (if asked for), then the report on stdout as JSON or text."""
    if junit is not None:
        junit.write_bytes(junit_xml(report))
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        sys.stdout.write(render_text(report))
    sys.stdout.flush()


def _debug(args: argparse.Namespace) -> int:
    require_qemu()
    extra: tuple[Argument, ...] = ()
    if args.gdb is not None:
        port = args.gdb
        if not 0 < port < 65536:
            raise CliError(f"--gdb {port}: not a TCP port (1 to 65535)")
        if not port_is_free(Protocol.TCP, port):
            raise CliError(f"--gdb {port}: the port is in use on 127.0.0.1", hint="choose another")
        extra = (
            Argument("-gdb", f"tcp:127.0.0.1:{port}", "gdb stub (vmtest debug --gdb)"),
            Argument("-S", None, "start paused: continue from gdb, or with :cont"),
        )
    workdir = Path(tempfile.mkdtemp(prefix="vmtest-debug-"))
    try:
        vm = Machine(args.image, accel=args.accel, workdir=workdir, extra_arguments=extra)
        session = DebugSession(
            vm, sys.stdin, output=sys.stdout, messages=sys.stderr, pause_before=args.pause_before
        )
        if args.gdb is not None:
            kernel = next(a.value for a in vm.arguments if a.option == "-kernel")
            session.say(
                f"QEMU starts paused; attach with gdb -ex 'target remote 127.0.0.1:{args.gdb}' "
                f"(the kernel, without symbols: {kernel}) and continue there, or type :cont"
            )
        with contextlib.closing(vm):
            code = session.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
