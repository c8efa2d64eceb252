"""Names and values defined once: the library's Enums are the CLI's option types, one module
encodes JSON and text, one function makes rich Consoles."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import typer

from conftest import REPO_ROOT, assert_one_error_line, not_one_of
from rows import insert_rows, raw_rows
from sessionctl.encoding import (
    dumps_for_output,
    dumps_for_terminal,
    dumps_keeping_bytes,
    dumps_like_json_stringify,
    has_lone_surrogates,
    is_storable_text,
    printable,
    storable_text,
)
from sessionctl.enums import ConflictPolicy, SessionState, SessionStatus, SortKey
from sessionctl.errors import InvalidSessionError, UnknownChoiceError, UsageError
from sessionctl.repository import (
    CONFLICT_POLICIES,
    SORT_COLUMNS,
    STATES,
    STATUSES,
    ServerSession,
    SessionQuery,
    build_list_query,
    cursor_for,
    get_server_session,
    import_session_rows,
    iter_session_rows,
    save_server_session,
)

T0 = 1_769_558_400_000
SRC = REPO_ROOT / "src" / "sessionctl"


# -- every Enum-typed option refuses a bad value alike: exit 2, one line ------------------------


def _enum_typed_options() -> list[tuple[list[str], object]]:
    """(command path, click parameter) of every option whose values are a closed set."""
    from sessionctl.cli import app

    found = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for param in command.params:
            if hasattr(param.type, "choices"):
                found.append((path, param))

    walk(typer.main.get_command(app), [])
    return found


ENUM_TYPED_OPTIONS = _enum_typed_options()


def _args_for(path: list[str], param) -> list[str]:
    from sessionctl.cli import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    placeholders = [p.name for p in command.params if p.param_type_name == "argument" and p.required]
    return [*path, *placeholders, param.opts[0], "bogus"]


def test_the_enum_typed_options_are_the_ones_expected():
    named = {(" ".join(path), param.opts[0]) for path, param in ENUM_TYPED_OPTIONS}
    assert {("sessions list", "--sort"), ("sessions list", "--status"), ("sessions import", "--on-conflict"),
            ("sessions list", "--format"), ("status", "--format"), ("verify", "--format")} <= named


@pytest.mark.parametrize(
    "path, param", ENUM_TYPED_OPTIONS, ids=[f"{' '.join(p)} {q.opts[0]}" for p, q in ENUM_TYPED_OPTIONS]
)
def test_every_enum_typed_option_refuses_a_bad_value_with_exit_2_and_one_line(cli, tmp_path, path, param):
    result = cli("--db", "sessions.db", *_args_for(path, param))

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    option = " / ".join(f"'{name}'" for name in param.opts)
    assert_one_error_line(result.stderr, not_one_of(option, "bogus", param.type.choices))
    assert list(tmp_path.iterdir()) == []  # refused before any target was opened


@pytest.mark.parametrize(
    "args, option, choices",
    [
        (["sessions", "list", "--sort", "bogus"], "'--sort'", SortKey.values()),
        (["sessions", "list", "--status", "bogus"], "'--status' / '-s'", SessionStatus.values()),
        (["sessions", "import", "in.jsonl", "--on-conflict", "bogus"], "'--on-conflict'", ConflictPolicy.values()),
        (["sessions", "list", "--format", "bogus"], "'--format' / '-f'", ["table", "json", "ndjson", "csv"]),
    ],
)
def test_a_bad_choice_is_one_line_from_the_real_process(run_sessionctl, args, option, choices):
    result = run_sessionctl("--db", "sessions.db", *args)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"sessionctl: error: {not_one_of(option, 'bogus', choices)}"]


def test_a_bad_global_option_value_is_one_line_too(run_sessionctl):
    result = run_sessionctl("--timeout", "soon", "status")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sessionctl: error: Invalid value for '--timeout': 'soon' is not a valid float range."
    ]


def test_a_group_without_a_command_still_shows_its_help(run_sessionctl):
    result = run_sessionctl("sessions")

    assert "Usage: sessionctl sessions" in result.stdout + result.stderr
    assert "sessionctl: error" not in result.stderr


def test_the_cli_offers_exactly_the_library_values():
    choices = {(" ".join(path), param.opts[0]): list(param.type.choices) for path, param in ENUM_TYPED_OPTIONS}
    assert choices["sessions list", "--sort"] == list(SortKey.values()) == list(SORT_COLUMNS)
    assert choices["sessions list", "--status"] == list(SessionStatus.values()) == list(STATUSES)
    assert choices["sessions import", "--on-conflict"] == list(ConflictPolicy.values()) == list(CONFLICT_POLICIES)
    assert SessionState.values() == STATES == ("active", "expired", "all")


# -- the library takes Enum members and their strings alike --------------------------------------


def test_status_as_string_or_member_stores_the_same_row(migrated_db, db_path):
    save_server_session(migrated_db, "by-string", ServerSession(status="selecting"), now=T0)
    save_server_session(migrated_db, "by-member", ServerSession(status=SessionStatus.SELECTING), now=T0)

    by_member, by_string = raw_rows(db_path)
    assert by_member[2:] == by_string[2:]  # every column but user_id
    assert get_server_session(migrated_db, "by-string", now=T0).status is SessionStatus.SELECTING


@pytest.mark.parametrize("bad", ["bogus", "Completed", None, 3])
def test_an_unknown_status_is_the_librarys_typed_error_and_nothing_is_written(migrated_db, db_path, bad):
    with pytest.raises(InvalidSessionError, match=re.escape(repr(bad))):
        save_server_session(migrated_db, "u1", ServerSession(status=bad), now=T0)
    assert raw_rows(db_path) == []


def test_list_query_is_the_same_for_strings_and_members():
    as_strings = SessionQuery(statuses=("gathering", "completed"), state="expired", sort="updated", desc=True)
    as_members = SessionQuery(
        statuses=(SessionStatus.GATHERING, SessionStatus.COMPLETED),
        state=SessionState.EXPIRED,
        sort=SortKey.UPDATED,
        desc=True,
    )
    sql, params = build_list_query(as_strings, T0)

    assert (sql, params) == build_list_query(as_members, T0)
    assert all(type(p) in (str, int) for p in params)  # plain values bound, never Enum members


def test_cursor_for_takes_the_sort_as_string_or_member():
    row = {"user_id": "u1", "expires_at": 5, "updated_at": 6, "created_at": 7}
    for key in SortKey:
        assert cursor_for(row, key) == cursor_for(row, key.value)


@pytest.mark.parametrize(
    "query, name, value, choices",
    [
        (SessionQuery(sort="name"), "sort", "name", SortKey.values()),
        (SessionQuery(state="live"), "state", "live", SessionState.values()),
    ],
)
def test_an_unknown_sort_or_state_is_the_librarys_typed_error(query, name, value, choices):
    with pytest.raises(UnknownChoiceError) as caught:
        build_list_query(query, T0)

    assert (caught.value.name, caught.value.value, caught.value.choices) == (name, value, choices)
    assert str(caught.value) == f"unknown {name} {value!r}: use one of {', '.join(choices)}"
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)


def test_an_unknown_status_filter_is_invalid_session_error():
    with pytest.raises(InvalidSessionError, match="unknown status 'GATHERING'"):
        build_list_query(SessionQuery(statuses=("GATHERING",)), T0)


def test_export_state_as_string_or_member(migrated_db, db_path):
    insert_rows(db_path, [
        {"user_id": "live", "status": "gathering", "created_at": T0, "updated_at": T0, "expires_at": T0 + 10},
        {"user_id": "gone", "status": "gathering", "created_at": T0, "updated_at": T0, "expires_at": T0 - 10},
    ])
    for state in SessionState:
        by_member = [row["user_id"] for row in iter_session_rows(migrated_db, state, now=T0)]
        assert by_member == [row["user_id"] for row in iter_session_rows(migrated_db, state.value, now=T0)]


@pytest.mark.parametrize("policy", [ConflictPolicy.NEWER, "newer"])
def test_import_takes_the_conflict_policy_as_string_or_member(migrated_db, db_path, policy):
    stored = {"user_id": "u1", "status": "gathering", "created_at": T0, "updated_at": T0, "expires_at": T0 + 1}
    insert_rows(db_path, [stored])
    incoming = [dict(stored, status="ordering", updated_at=T0 + 1), dict(stored, user_id="u2")]

    assert import_session_rows(migrated_db, incoming, policy) == (2, 0)
    assert [row[3] for row in raw_rows(db_path)] == ["ordering".encode().hex().upper(), "gathering".encode().hex().upper()]


def test_import_refuses_an_unknown_conflict_policy(migrated_db):
    with pytest.raises(ValueError, match="skip, replace, newer"):
        import_session_rows(migrated_db, [], "merge")


def test_members_read_and_print_as_their_values():
    assert f"{SortKey.USER}" == str(SortKey.USER) == "user"
    assert SortKey.USER == "user" and {"user": 1}[SortKey.USER] == 1
    assert json.dumps([ConflictPolicy.SKIP]) == '["skip"]'


# -- the stored form: byte for byte what JSON.stringify writes -----------------------------------

STRINGIFY_CORPUS = [
    {"budget_krw": 50000, "region": "서울", "plan": "vps-2c-4g"},
    [{"role": "user", "content": "서버 추천 부탁드려요"}, {"role": "assistant", "content": "네, 예산은요?"}],
    "서버 추천",
    {"이름": "값", "nested": {"deep": [1, [2, [3, {"x": None}]]]}, "empty": {}, "none": []},
    'quotes " and \\ backslashes / slash </script>',
    "controls \x00 \x01 \x08 \t \n \x0b \x0c \r \x1f and \x7f",
    "line separators \u2028 \u2029, BOM \ufeff, astral 😀 𝄞",
    "half \ud83d alone",
    "\ude00 low half first",
    "서 \ud800 mixed with text",
    "\ud83d\ude00 two halves that JavaScript sees as one character",
    [True, False, None, 0, -5, 2**53 - 1, 0.5, -2.25, 0.1, 1e21],
    None,
    "",
]


def _json_stringify_in_node(values: list, tmp_path) -> list[str]:
    node = shutil.which("node")
    assert node, "node is needed to compare with JSON.stringify (wrangler's tests need it too)"
    script = tmp_path / "stringify.js"
    script.write_text(
        "let input = '';\n"
        "process.stdin.on('data', (chunk) => { input += chunk; });\n"
        "process.stdin.on('end', () => {\n"
        "  const values = JSON.parse(input);\n"
        "  process.stdout.write(JSON.stringify(values.map((value) => JSON.stringify(value))));\n"
        "});\n"
    )
    # ASCII on the way in, so lone surrogates reach JavaScript as \\uXXXX escapes.
    done = subprocess.run([node, str(script)], input=json.dumps(values), capture_output=True, text=True,
                          encoding="utf-8", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_stored_form_is_byte_for_byte_json_stringify(tmp_path):
    expected = _json_stringify_in_node(STRINGIFY_CORPUS, tmp_path)

    assert [dumps_like_json_stringify(value) for value in STRINGIFY_CORPUS] == expected


def test_korean_is_stored_as_text_even_beside_a_lone_surrogate(migrated_db, db_path):
    save_server_session(migrated_db, "u1", ServerSession(messages=["서버 \ud83d 추천"]), now=T0)

    (row,) = raw_rows(db_path)
    assert bytes.fromhex(row[9]).decode("utf-8") == '["서버 \\ud83d 추천"]'
    assert get_server_session(migrated_db, "u1", now=T0).messages == ["서버 \ud83d 추천"]


@pytest.mark.parametrize("value", STRINGIFY_CORPUS[:4] + STRINGIFY_CORPUS[5:7] + [["서버", {"a": [1.5, None]}]])
def test_the_stored_form_round_trips(value):
    assert json.loads(dumps_like_json_stringify(value)) == value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"a": [math.nan]}])
def test_the_stored_form_refuses_nan_and_infinity(bad):
    with pytest.raises(ValueError, match="NaN and Infinity"):
        dumps_like_json_stringify(bad)


def test_saving_nan_is_invalid_session_error_naming_the_column_and_writes_nothing(migrated_db, db_path):
    with pytest.raises(InvalidSessionError, match="'u1' rejected: collected_info: NaN and Infinity"):
        save_server_session(migrated_db, "u1", ServerSession(collected_info={"budget": math.nan}), now=T0)
    assert raw_rows(db_path) == []


# -- output and JSON Lines: text as text, bytes that are not UTF-8 kept as \\udcXX ------------------


def test_lines_keep_text_as_text_with_pythons_separators():
    row = {"user_id": "tg:1", "messages": '["서버"]', "n": 1}
    assert dumps_keeping_bytes(row) == '{"user_id": "tg:1", "messages": "[\\"서버\\"]", "n": 1}'
    assert json.loads(dumps_keeping_bytes(row)) == row


def test_a_line_with_bytes_that_are_not_utf8_is_ascii_and_round_trips():
    row = {"user_id": "bytes \udcff\udcfe", "note": "서버"}
    line = dumps_keeping_bytes(row)

    assert line.isascii() and "\\udcff" in line and "\\uc11c" in line
    assert json.loads(line) == row
    assert storable_text(json.loads(line)["user_id"]) == b"bytes \xff\xfe"


def test_a_line_refuses_what_json_cannot_hold_but_output_shows_it():
    with pytest.raises(TypeError):
        dumps_keeping_bytes({"blob": b"\x00\xff"})
    assert dumps_for_output({"blob": b"\x00\xff"}) == '{"blob": "b\'\\\\x00\\\\xff\'"}'


def test_output_stays_json_for_nan_and_infinity():
    # NaN and Infinity are not JSON; 1e999 is a JSON number that reads back as infinity,
    # and SQLite stores no NaN (it stores NULL).
    assert dumps_for_output([math.nan, math.inf, -math.inf]) == "[null, 1e999, -1e999]"
    assert json.loads("[1e999, -1e999]") == [math.inf, -math.inf]


def test_output_indents_like_json_dumps():
    value = {"a": [1, {"b": "서"}]}
    assert dumps_for_output(value, indent=2) == json.dumps(value, ensure_ascii=False, indent=2)


# -- text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, lone",
    [("", False), ("ascii", False), ("서버 😀", False), ("\udcff", True), ("a\ud800", True), ("\udfff서", True)],
)
def test_has_lone_surrogates(text, lone):
    assert has_lone_surrogates(text) is lone


def test_storable_text_gives_back_the_bytes_that_were_read_and_refuses_a_lone_half():
    assert storable_text("서버") == "서버"
    assert storable_text(b"ok \xff\xe4\xb8".decode("utf-8", "surrogateescape")) == b"ok \xff\xe4\xb8"
    with pytest.raises(UnicodeEncodeError):
        storable_text("half \ud83d")
    assert is_storable_text("\udc80") and not is_storable_text("\ud83d") and is_storable_text("서")


@pytest.mark.parametrize(
    "text, shown",
    [
        ("서버", "서버"),
        ("bad \udcff byte", "bad \ufffd byte"),
        ("\udce4\udcb8 cut sequence", "\ufffd cut sequence"),  # one U+FFFD, as UTF-8 readers show it
        ("half \ud83d alone", "half \ufffd alone"),
        ("서 \ud800\udcff", "서 \ufffd\ufffd"),
    ],
)
def test_printable(text, shown):
    assert printable(text) == shown


def test_json_for_a_terminal_keeps_text_and_replaces_what_is_not_utf8():
    assert dumps_for_terminal({"c": "서 \ud83d"}, indent=2) == '{\n  "c": "서 \ufffd"\n}'


def test_show_of_a_message_holding_a_lone_surrogate_prints_it_replaced(cli, db_path, migrated_db):
    save_server_session(migrated_db, "u1", ServerSession(messages=[{"content": "half \ud83d 서"}]), now=T0)

    result = cli("--db", db_path, "sessions", "show", "u1")

    assert result.exit_code == 0, result.output
    assert '"content": "half \ufffd 서"' in result.stdout


# -- one place each -------------------------------------------------------------------------------

# The HTTP request body sent to D1 is a wire format of its own (targets/d1_http.py).
JSON_ENCODER_EXCEPTIONS = {"encoding.py", "targets/d1_http.py"}


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8")


def test_json_is_encoded_only_in_the_encoding_module():
    encoders = re.compile(r"json\.dumps|JSONEncoder|ensure_ascii")
    assert [name for name, text in _sources() if encoders.search(text)
            and name not in JSON_ENCODER_EXCEPTIONS] == []


def test_utf8_checks_live_only_in_the_encoding_module():
    checks = re.compile(r"""encode\(["']utf-8["']|["']surrogateescape["']""")
    # sqlite_file decodes what SQLite returns; d1_http encodes its request body.
    targets = {"targets/sqlite_file.py", "targets/d1_http.py"}
    assert [name for name, text in _sources() if checks.search(text)
            and name not in {"encoding.py", *targets}] == []


def test_rich_consoles_are_made_only_by_the_renderer():
    assert [name for name, text in _sources() if "Console(" in text] == ["cli/render.py"]


def test_version_imports_neither_rich_nor_json_nor_csv():
    code = (
        "import sys\n"
        "sys.argv = ['sessionctl', '--version']\n"
        "try:\n"
        "    from sessionctl.cli import main; main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'json', 'csv')), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert result.stdout.startswith("sessionctl ")
    assert result.stderr == "[]\n"
