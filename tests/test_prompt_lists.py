"""Prompt files of ``record --prompts``: text, CSV and JSONL rows, and one readable error per bad line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dumpunet.errors import OptionError, PromptListError, StoreError
from dumpunet.prompt_lists import PromptList, PromptListOptions, PromptRow, option_differences, read_prompt_list
from dumpunet.store.schema import PromptListInfo


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_text_lines_are_prompts_and_blank_lines_and_comments_are_skipped(tmp_path):
    path = _file(tmp_path, "p.txt", "# cats\n  a cat  \n\n   \n  # indented comment\na (~: M00: cute :~) dog\n")
    assert read_prompt_list(path).rows == (PromptRow(2, "a cat"), PromptRow(6, "a (~: M00: cute :~) dog"))


def test_csv_columns_give_negative_prompts_and_seeds_and_an_empty_seed_is_the_command_lines(tmp_path):
    path = _file(tmp_path, "p.csv", '\ufeffprompt,negative_prompt,seed\n"a cat, pink",blurry,7\n\na dog,,\n')
    plist = read_prompt_list(path)
    assert plist.rows == (PromptRow(2, "a cat, pink", "blurry", 7), PromptRow(4, "a dog", "", None))
    assert plist.resolved("ugly", 3) == [("a cat, pink", "blurry", 7), ("a dog", "", 3)]


def test_csv_without_a_negative_column_takes_the_command_lines(tmp_path):
    plist = read_prompt_list(_file(tmp_path, "p.csv", "seed,prompt\n1,a\n"))
    assert plist.resolved("ugly", 3) == [("a", "ugly", 1)]


def test_jsonl_rows_with_and_without_seeds(tmp_path):
    path = _file(tmp_path, "p.jsonl", '{"prompt": "a cat", "seed": 11}\n\n{"prompt": "a dog", "negative_prompt": "blurry", '
                                      '"seed": null}\n')
    plist = read_prompt_list(path)
    assert plist.rows == (PromptRow(1, "a cat", None, 11), PromptRow(3, "a dog", "blurry", None))
    assert plist.resolved("", 5) == [("a cat", "", 11), ("a dog", "blurry", 5)]


def test_the_digest_changes_with_any_resolved_value_and_not_with_the_file_format(tmp_path):
    text = read_prompt_list(_file(tmp_path, "p.txt", "a cat\na dog\n"))
    jsonl = read_prompt_list(_file(tmp_path, "p.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog", "seed": 5}\n'))
    assert text.sha256("", 5) == jsonl.sha256("", 5)
    assert len({text.sha256("", 5), text.sha256("", 6), text.sha256("blurry", 5), jsonl.sha256("", 6)}) == 4


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.txt", "a cat\n\na (~: M00: cute girl\n",
         "p.txt, line 3: bad layer prompt: unclosed group: '(~:' without a matching ':~)'\n  a (~: M00: cute girl\n    ^^^"),
        ("p.txt", "a <lora:pink:0.8> cat\n",
         ("p.txt, line 1: a prompt file cannot load LoRAs per prompt (<lora:pink:0.8>); give --lora FILE:WEIGHT for "
          "every prompt\n  a <lora:pink:0.8> cat\n    ^^^^^^^^^^^^^^^")),
        ("p.csv", "prompt,seed\na cat,1\na dog,x7\n",
         "p.csv, line 3: seed must be a whole number 0 or more (or empty), got 'x7'\n  a dog,x7\n        ^^"),
        ("p.csv", "prompt,sed\n",
         "p.csv, line 1: unknown column 'sed' in the header (columns: prompt, negative_prompt, seed)\n  prompt,sed\n         ^^^"),
        ("p.csv", "seed\n1\n", "p.csv, line 1: the header names no 'prompt' column (columns: prompt, negative_prompt, seed)"),
        ("p.csv", "prompt,seed\na,1,2\n", "p.csv, line 2: 3 fields, the header names 2\n  a,1,2\n       ^"),
        ("p.csv", 'prompt\n"a cat\n', "p.csv, line 2: bad CSV: unexpected end of data"),
        ("p.csv", "prompt,negative_prompt\na,(~: M00 :~)\n",
         "p.csv, line 2: negative_prompt: bad layer prompt: "),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b" "seed": 1}\n',
         "p.jsonl, line 2: bad JSON: Expecting ',' delimiter\n  {\"prompt\": \"b\" \"seed\": 1}\n                 ^"),
        ("p.jsonl", '["a cat"]\n', "p.jsonl, line 1: a line must be a JSON object like {\"prompt\": \"a cat\"}, got list"),
        ("p.jsonl", '{"prompt": "a", "seed": 1.5}\n',
         "p.jsonl, line 1: 'seed' must be a whole number 0 or more, got 1.5\n  {\"prompt\": \"a\", \"seed\": 1.5}\n                  ^"),
        ("p.jsonl", '{"prompt": "a", "seed": -1}\n', "p.jsonl, line 1: 'seed' must be a whole number 0 or more, got -1"),
        ("p.jsonl", '{"prompt": "a", "negative": "b"}\n',
         "p.jsonl, line 1: unknown key 'negative' (keys: prompt, negative_prompt, seed)"),
        ("p.jsonl", '{"seed": 1}\n', "p.jsonl, line 1: no 'prompt' key"),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_line_and_place(tmp_path, name, text, message):
    path = _file(tmp_path, name, text)
    with pytest.raises(PromptListError) as err:
        read_prompt_list(path)
    assert str(err.value).startswith(f"{tmp_path}/{message}"), str(err.value)
    assert err.value.line == int(message.split("line ")[1].split(":")[0])


def test_an_empty_or_unreadable_file_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match=r"holds no prompt \(blank lines and # comments are skipped\)"):
        read_prompt_list(_file(tmp_path, "p.txt", "# only a comment\n\n"))
    with pytest.raises(OptionError, match="holds no prompt$"):
        read_prompt_list(_file(tmp_path, "p.csv", "prompt\n"))
    with pytest.raises(OptionError, match="cannot read it"):
        read_prompt_list(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"a\xffb\n")
    with pytest.raises(OptionError, match=r"not UTF-8 text \(byte 1\)"):
        read_prompt_list(tmp_path / "bin.txt")


def test_an_error_raised_later_for_a_row_names_its_line_and_keeps_the_caret(tmp_path):
    plist = PromptList(Path("p.txt"), (PromptRow(4, "a (~: IN12: x :~) cat"),))
    from dumpunet.errors import PromptSyntaxError

    wrapped = plist.error(plist.rows[0], PromptSyntaxError("unknown block 'IN12'", "a (~: IN12: x :~) cat", 6, length=4))
    assert str(wrapped) == "p.txt, line 4: bad layer prompt: unknown block 'IN12'\n  a (~: IN12: x :~) cat\n        ^^^^"
    assert str(plist.error(plist.rows[0], OptionError("--seed too large"))) == "p.txt, line 4: --seed too large"


def test_option_differences_name_each_flag_with_both_values():
    assert option_differences({"cfg": 7.0, "loras": [], "blocks": "IN00"}, {"cfg": 5.0, "loras": ["a.safetensors"],
                                                                              "blocks": "IN00"}) == [
        "--cfg 5.0 (recorded: 7.0)", '--lora ["a.safetensors"] (recorded: [])']
    assert option_differences({"width": None}, {"width": 64}) == ["--width 64 (recorded: not given)"]
    assert option_differences({"cfg": 7.0}, {"cfg": 7.0}) == []


def test_out_dir_goes_with_prompts():
    with pytest.raises(OptionError, match="--out-dir goes with --prompts"):
        PromptListOptions(out_dir=Path("stores"))
    assert PromptListOptions(prompts=Path("p.txt"), out_dir=Path("stores")).out_dir == Path("stores")


def test_the_prompt_list_attribute_round_trips_and_names_a_bad_field():
    info = PromptListInfo(source="p.txt", count=3, sha256="ab", seed=5, options={"cfg": 7.0}, index=1)
    assert PromptListInfo.from_json(info.to_json()) == info
    assert "index" not in PromptListInfo(source="p.txt", count=3, sha256="ab", seed=5).to_json()
    with pytest.raises(StoreError, match="prompt_list: attribute 'count' must be at least 1, got 0"):
        PromptListInfo.from_json({**info.to_json(), "count": 0})
