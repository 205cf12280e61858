"""The documentation in the repository stays true (issue 16): every flag of
`hana-node … --help` is documented, every link of the README and the docs
resolves inside the repository, every log event they name exists, and every
`hana-node` command in their examples parses."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
API = REPO / "docs" / "api.md"
OPERATIONS = REPO / "docs" / "operations.md"
README = REPO / "README.md"
MARKDOWN = [README, *sorted((REPO / "docs").glob("*.md"))]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_flags() -> Iterator[tuple[str, str, argparse.Action]]:
    """(command, flag, action) for every visible flag of hana-node's own
    commands (not the plugins', which parse their own flags)."""
    commands = subcommands(build_parser())
    assert {"serve", "status", "get", "keys", "put", "delete", "watch", "save", "saves", "restore", "export"} <= set(
        commands
    )
    assert {"import", "history", "audit", "undo", "redo", "members", "demo"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                if flag.startswith("--"):
                    yield name, flag, action


def code_spans(text: str) -> list[str]:
    """The text inside `inline code` and fenced or indented code blocks."""
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    text = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    spans += re.findall(r"`([^`\n]+)`", text)
    spans += [line for line in text.splitlines() if line.startswith("    ")]
    return spans


def test_every_flag_of_every_command_is_documented() -> None:
    spans = "\n".join(code_spans(API.read_text()) + code_spans(OPERATIONS.read_text()))
    flags = list(cli_flags())
    assert len(flags) > 60
    missing = sorted(
        {f"hana-node {cmd} {flag}" for cmd, flag, _ in flags if not re.search(rf"{re.escape(flag)}(?![\w-])", spans)}
    )
    assert not missing, f"not in docs/api.md or docs/operations.md (as code): {missing}"


def test_the_flag_check_sees_a_missing_flag() -> None:
    """The check above fails for a flag the docs do not name."""
    spans = "\n".join(code_spans("the `--api` flag and `--json`"))
    assert re.search(r"--api(?![\w-])", spans) and not re.search(r"--give-up(?![\w-])", spans)
    assert not re.search(r"--token(?![\w-])", "\n".join(code_spans("`--token-file F`")))


# mesh/cli.py is the CLI engineer's: these flags have no help text yet.
NO_HELP_YET = {"serve --log-level", "get --consistency", "keys --consistency", "history --prefix"}


def test_no_new_flag_without_help_text() -> None:
    """Every flag says what it does in --help; the known gaps may only shrink."""
    without = {f"{cmd} {flag}" for cmd, flag, action in cli_flags() if not action.help}
    assert without <= NO_HELP_YET, f"flags without help text: {sorted(without - NO_HELP_YET)}"


# -- links -----------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for m in re.finditer(r"^#{1,6} (.+)$", text, re.M):
        base = slug(m.group(1))
        name, n = base, 0
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.add(name)
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    found = links(doc)
    assert found or doc.name == "api.md" or doc.name == "operations.md"
    bad = []
    for target in found:
        if re.match(r"[a-z]+:", target):
            bad.append(f"{target}: not a file of the repository")
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.is_relative_to(REPO):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{doc.name}: {bad}"


def test_readme_links_the_docs() -> None:
    targets = {t.partition("#")[0] for t in links(README)}
    assert {"docs/api.md", "docs/operations.md"} <= targets


def test_the_slugs_are_githubs() -> None:
    assert slug("Reading `hana-node status`") == "reading-hana-node-status"
    assert slug("`members remove` while the machine still runs") == "members-remove-while-the-machine-still-runs"
    assert slug("Corrupt WAL") == "corrupt-wal"


# -- what the docs quote from the code -------------------------------------


def source_text() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "mesh").rglob("*.py")))


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_log_event_the_docs_name_exists(doc: Path) -> None:
    events = set(re.findall(r"event=([a-z_]+)", doc.read_text()))
    code = source_text()
    missing = sorted(e for e in events if not re.search(rf"event={e}(?![a-z_])", code))
    assert not missing, f"{doc.name} names events no code logs: {missing}"


def test_the_operator_messages_the_runbook_quotes_exist() -> None:
    code = source_text()
    for quoted in (
        "another process uses this data directory",
        "the node may not write",
        "closed the connection without answering this node's hello",
        "check that every node has the same --secret-file (or HANA_SECRET) and --cluster",
        "frame authentication failed (wrong secret or tampered frame)",
        "record payload checksum mismatch",
        "the node did not start and changed nothing",
        "is full: free space",
        "the member lost entries it had acknowledged",
    ):
        assert quoted in code or quoted.replace("'", '"') in code, quoted
        assert quoted in OPERATIONS.read_text(), quoted


def hana_commands(text: str) -> Iterator[list[str]]:
    """The argument lists of the `hana-node` commands in a document's code
    blocks (fenced or indented) and inline code, one per shell command."""
    blocks = [body for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S) if lang in ("", "sh", "bash")]
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    blocks += ["\n".join(line[4:] for line in rest.splitlines() if line.startswith("    "))]
    blocks += [span for span in re.findall(r"`([^`\n]+)`", rest) if span.startswith("hana-node ")]
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            try:
                tokens = list(lex)
            except ValueError:
                continue  # not shell (a JSON line, an ini line)
            segment: list[str] = []
            for tok in [*tokens, ";"]:
                if tok and set(tok) <= set(";|&<>()"):
                    if segment and (segment[0].endswith("hana-node") or segment[0] == "$hana"):
                        argv = segment[1:]
                        if argv and argv[-1] == "…" and not (len(argv) > 1 and argv[-2].startswith("--")):
                            argv = argv[:-1]  # `hana-node serve …`: "and its flags"
                        yield argv
                    segment = []
                else:
                    segment.append(tok)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_hana_node_command_in_the_examples_parses(doc: Path) -> None:
    parser = build_parser()
    own = set(subcommands(parser))
    commands = [c for c in hana_commands(doc.read_text()) if c and c[0] in own and "--help" not in c]
    if doc != API:
        assert commands, f"no hana-node command found in {doc.name}"
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.name}: `hana-node {' '.join(argv)}` does not parse")


def test_the_command_reader_finds_commands() -> None:
    text = "    .venv/bin/hana-node save a --api x; .venv/bin/hana-node restore a --api x   # both\n"
    assert list(hana_commands(text)) == [["save", "a", "--api", "x"], ["restore", "a", "--api", "x"]]


# -- the systemd unit ------------------------------------------------------


def ini_blocks() -> list[str]:
    return re.findall(r"```ini\n(.*?)```", OPERATIONS.read_text(), re.S)


def test_the_unit_starts_hana_node_serve_with_real_flags() -> None:
    unit = ini_blocks()[0]
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1).replace("\\\n", " "))
    assert argv[0].endswith("/hana-node") and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])
    assert args.secret_file and args.tokens_file and args.data_dir
    for line in ("User=hana", "Restart=on-failure", "RestartPreventExitStatus=2", "After=network-online.target"):
        assert line in unit
    assert re.search(r"^LimitNOFILE=\d+$", unit, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_files_are_valid_for_systemd(tmp_path: Path) -> None:
    """systemd-analyze verify prints a warning for every unknown key or bad
    value; the examples must give none."""
    names = ["hana-node.service", "hana-backup.service", "hana-backup.timer"]
    blocks = ini_blocks()
    assert len(blocks) == len(names)
    for name, text in zip(names, blocks, strict=True):
        # Point ExecStart at programs that exist here.
        text = text.replace("/opt/hana/.venv/bin/hana-node", shutil.which("true") or "/bin/true")
        text = text.replace("/usr/local/bin/hana-backup", shutil.which("true") or "/bin/true")
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
