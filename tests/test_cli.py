"""The CLI: its error contract (an AsrnError is one line and exit 1; any other exception is a bug with its
traceback), `--help` showing the real defaults, and the docs agreeing with `--help` (docs/commands.md lists every
flag; every command line in the README and docs/ uses only real flags)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import asrn.synth_features
import asrn.synth_videos
from asrn.cli import _HelpWithDefaults, build_parser, job_argv, main
from asrn.errors import AsrnError
from asrn.loop import RECIPES

ROOT = Path(__file__).resolve().parents[1]
COMMANDS_PAGE = ROOT / "docs" / "commands.md"
DOC_PAGES = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPE_FIELDS = ("lr", "weight_decay", "batch_size", "dropout", "hidden", "epochs", "patience")


def test_user_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["synth", "features", "--out", str(tmp_path / "s"), "--num-videos", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asrn synth: error: num_videos = 3")


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(asrn.synth_features, "synthesize_feature_store", broken)
    assert not issubclass(ValueError, AsrnError)
    with pytest.raises(ValueError, match="internal bug"):
        main(["synth", "features", "--out", str(tmp_path / "s"), "--num-videos", "10"])


# ---------------------------------------------------------------- --help and the docs

def _commands() -> dict[str, argparse.ArgumentParser]:
    """'train', 'synth videos', ... -> its parser."""
    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{prefix} {name}".strip())
                return
        yield prefix, parser
    return dict(walk(build_parser(), ""))


def _help_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The flags of the usage line of `--help` (each option's first spelling), without -h."""
    usage = parser.format_usage()
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage)) - {"--help"}


def _synopsis_commands() -> dict[str, set[str]]:
    """The flags of each command in docs/commands.md's "## Synopsis" block (continuation lines are indented)."""
    groups = {name.split()[0] for name in _commands() if " " in name}  # synth, weights: commands of two words
    section = COMMANDS_PAGE.read_text().split("\n## Synopsis\n", 1)[1]
    block = section.split("```\n", 2)[1]
    commands: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        line = line.split("#", 1)[0]
        if line.startswith("asrn "):
            words = line.split()[1:]
            name = " ".join(w for w in words[:2] if re.fullmatch(r"[a-z]+", w) and not w.startswith("-"))
            if name.split()[0] not in groups:
                name = name.split()[0]
            commands[name] = line
        elif line.strip() and name:
            commands[name] += " " + line
    return {name: set(re.findall(r"--[a-z][a-z0-9-]*", text)) for name, text in commands.items()}


def test_the_commands_page_lists_every_flag_of_every_command():
    listed, commands = _synopsis_commands(), _commands()
    assert set(listed) == set(commands)
    for name, parser in commands.items():
        assert listed[name] == _help_flags(parser), name
    aliases = {s for p in commands.values() for a in p._actions for s in a.option_strings[1:] if s != "--help"}
    assert aliases == {"--mlflow-uri", "--experiment"}
    text = "\n".join(page.read_text() for page in DOC_PAGES)
    assert all(f"`{alias}`" in text for alias in aliases)  # the old spellings are documented too


def _command_lines(text: str) -> list[str]:
    """The logical lines of a page's code blocks (`\\`-continued and indented continuation lines joined), and its
    inline code that starts with `asrn `."""
    parts = text.split("```")
    lines = [span for prose in parts[0::2] for span in re.findall(r"`(asrn [^`]+)`", prose)]
    for block in parts[1::2]:
        joined = ""
        for line in block.splitlines()[1:]:
            line = line.split(" #", 1)[0].rstrip()
            if joined and (joined.endswith("\\") or line[:1].isspace()):
                joined = joined.rstrip("\\") + " " + line.strip()
                continue
            if joined:
                lines.append(joined)
            joined = line
        lines.append(joined)
    return lines


def _documented_invocations() -> list[tuple[str, str, set[str]]]:
    """(page, command, flags) for every `asrn COMMAND ...` or `python -m jobs.COMMAND ...` in a code block."""
    commands = _commands()
    found = []
    for page in DOC_PAGES:
        for line in _command_lines(page.read_text()):
            for match in re.finditer(r"(?:^|\s)(?:asrn |python -m jobs\.)([a-z]+)(?: ([a-z]+))?", line):
                name = " ".join(w for w in match.groups() if w)
                name = name if name in commands else match.group(1)
                if name in commands:
                    flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line[match.end():].split(" asrn ", 1)[0])
                    found.append((str(page.relative_to(ROOT)), name, set(flags)))
    return found


def test_every_documented_command_line_uses_real_flags():
    """A flag renamed or removed in --help fails here while the README or a docs page still shows it."""
    commands = _commands()
    invocations = _documented_invocations()
    assert {name for _, name, _ in invocations} >= {"extract", "train", "tune", "predict", "synth videos"}
    for page, name, flags in invocations:
        known = {s for a in commands[name]._actions for s in a.option_strings}
        assert flags <= known, (page, name, sorted(flags - known))


def _config_classes() -> dict:
    from asrn.demo import DemoConfig
    from asrn.extract import ExtractConfig
    from asrn.predict import PredictConfig
    from asrn.scoring import ScoreConfig
    from asrn.train import TrainConfig
    from asrn.tune import TuneConfig

    return {"extract": ExtractConfig, "train": TrainConfig, "tune": TuneConfig, "predict": PredictConfig,
            "predict --features": ScoreConfig, "demo": DemoConfig}


def test_help_defaults_are_the_configs_defaults():
    """A flag's argparse default is its config field's default, except the recipe's fields (None: the recipe
    decides), so a flag not given changes nothing."""
    commands = _commands()
    for name, config_cls in _config_classes().items():
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        name = name.split(" --")[0]  # predict: two configs (VIDEO paths, or a collection) behind one parser
        for action in commands[name]._actions:
            field = fields.get(action.dest)
            if field is None or action.required or not action.option_strings or \
                    (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
                continue  # (a field the config requires may have an optional flag: --checkpoint or --model)
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if default is None or (name == "tune" and action.dest in ("hidden", "patience")) or \
                    (name == "train" and action.dest in RECIPE_FIELDS):
                assert action.default is None, (name, action.dest)
            else:
                assert action.default == default, (name, action.dest, action.default, default)
    synth = {"synth videos": asrn.synth_videos.synthesize_videos,
             "synth features": asrn.synth_features.synthesize_feature_store}
    for name, function in synth.items():
        parameters = inspect.signature(function).parameters
        for action in commands[name]._actions:
            if action.dest in parameters and not action.required:
                assert action.default == parameters[action.dest].default, (name, action.dest)


def test_help_shows_every_real_default():
    """Every option that is not required and not an on/off switch names its default in --help."""
    formatter = _HelpWithDefaults("asrn")
    for name, parser in _commands().items():
        for action in parser._actions:
            if action.required or not action.option_strings or action.nargs == 0:
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in text, (name, action.option_strings)
            if action.default is not None:
                assert str(action.default) in text, (name, action.option_strings)
    train_help = _commands()["train"].format_help()
    for recipe in RECIPES.values():  # the recipe's values stand where a flag defaults to the recipe
        assert f"{recipe.name} {recipe.lr:g}" in train_help and f"{recipe.name} {recipe.epochs}" in train_help


def test_a_flag_not_given_leaves_the_recipe_value(tmp_path):
    from asrn.cli import _config_from_args
    from asrn.train import TrainConfig

    args = build_parser().parse_args(["train", "--features", str(tmp_path), "--task", "sub", "--out",
                                      str(tmp_path / "o"), "--recipe", "paper", "--dropout", "0.2"])
    config = _config_from_args(TrainConfig, args)
    assert (config.lr, config.epochs, config.dropout) == (RECIPES["paper"].lr, RECIPES["paper"].epochs, 0.2)
    assert (config.num_workers, config.seed, config.verbose, config.register_model) == (1, 0, False, None)


def test_mlflow_and_console_flags_reach_the_configs(tmp_path):
    from asrn.cli import _config_from_args
    from asrn.tune import TuneConfig

    for old, new in (("--mlflow-uri", "--tracking-uri"), ("--experiment", "--experiment-name")):
        for flag in (old, new):
            args = build_parser().parse_args(["tune", "--features", str(tmp_path), "--task", "obj", "--out",
                                              str(tmp_path), "--num-samples", "2", flag, "x"])
            assert vars(args)["mlflow_uri" if "uri" in new else "experiment"] == "x"
    args = build_parser().parse_args(["tune", "--features", str(tmp_path), "--task", "obj", "--out", str(tmp_path),
                                      "--num-samples", "2", "--register-model", "asrn-obj", "--verbose"])
    config = _config_from_args(TuneConfig, args)
    assert (config.register_model, config.verbose) == ("asrn-obj", True)


def test_predict_of_video_paths_takes_no_address(tmp_path, capsys):
    """`asrn predict VIDEO` runs in this process; --address belongs to scoring a collection (tests/test_scoring.py)."""
    assert main(["predict", "v.mp4", "--checkpoint", "c.pt", "--out", str(tmp_path), "--address", "auto"]) == 1
    assert "--address" in capsys.readouterr().err


def test_a_job_keeps_the_flags_it_was_given(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert job_argv("train", ["--task", "sub"])[-4:] == ["--address", "10.0.0.1:6379", "--tracking-uri",
                                                         "http://mlflow:5000"]
    for flag in ("--tracking-uri", "--mlflow-uri"):
        assert "http://mlflow:5000" not in job_argv("tune", [flag, "sqlite:///x.db"])
    assert "--tracking-uri" not in job_argv("extract", [])
