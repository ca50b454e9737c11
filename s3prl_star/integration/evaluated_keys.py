"""The config values s3prl 0.4.18 passes to `eval`, per downstream task (`-d`), and their check.

s3prl's experts build parts of a model by evaluating strings of the config in the namespace of one of
their modules: `eval(self.modelrc["select"])` (asr, speech_commands, voxceleb1, fluent_commands,
emotion), `eval(model_select)` and `eval(metric)` (ctc), `eval(self.modelrc["ObjectiveLoss"])` and
the module names of sv_voxceleb1/model.py, `eval(pooling)` of s3prl's shared `UtteranceLevel`,
`eval(model_type)` of emotion's `DeepModel`, `eval(f"self.get_{mode}_dataloader")` for the split names,
`eval(decoder_args.unk_weight)`; the runner evaluates `f"get_{name}"` for the optimizer and scheduler and
`f"runner.{args.mode}"`. A config that reaches them (a `-c` file, an `-o config.*` override, the Config
stored in a checkpoint that `-e` / `-a` resumes or evaluates) would run whatever such a string says.

`TASKS` lists every such key path per task, `CONSTRUCTORS` the keys the classes a config can choose
evaluate in their own options, and `check_evaluated` refuses, before the runner starts, any value that is
not what that code expects: the name of one of the classes (or functions) of the module whose namespace
evaluates it, checked on that module with `hasattr`, a split with a `get_<split>_dataloader` method, a
number. Names are identifiers, so evaluating them reads one attribute and runs nothing else.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Iterator

from s3prl_star.integration.config_check import ConfigError

# What an evaluated value must be.
CLASS = "class"  # the name of an nn.Module class of the namespace (what s3prl instantiates)
FUNCTION = "function"  # the name of a function of the namespace (ctc's metrics)
GETTER = "getter"  # NAME with a function get_NAME in the namespace (optimizers, schedulers)
DATALOADER = "dataloader"  # SPLIT with a method get_SPLIT_dataloader on the expert class
NUMBER = "number"  # a number, or a string s3prl evaluates to one: '-1.5', '-math.inf'
CHOICE = "choice"  # one of `choices`

RUNNER_MODES = ("train", "evaluate", "inference")  # run_downstream.py: eval(f"runner.{args.mode}")()
ARGS_SOURCE = "the runner's arguments (-m, -t, -o args.*)"  # where `args.*` values come from
_EVAL_CALL = re.compile(r"(?<![\w.])(?<!def )eval\(")


@dataclass(frozen=True)
class Evaluated:
    """One config value s3prl evaluates.

    `path`: its key path, from the config root (`("args", NAME)`: a runner argument, set by the command
    line or `-o args.NAME`), or, in `CONSTRUCTORS`, from the chosen class's options; "*" = every item
    of a list. `namespace`: the module whose globals the `eval` sees (`module:Class` for
    `self.`-lookups). `options`: where the chosen class's own options are, relative to the mapping
    that holds the key ("{}" = the chosen name; () = that mapping itself; None = the class gets none
    from the config). `modes`: only in these runner modes (empty: always)."""

    path: tuple[str, ...]
    namespace: str
    kind: str
    options: tuple[str, ...] | None = None
    choices: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()


def _expert(task: str) -> str:
    return f"s3prl.downstream.{task}.expert"


def _split_names(task: str) -> tuple[Evaluated, ...]:
    """The split names an expert with `get_dataloader(mode) = eval(f"self.get_{mode}_dataloader")()`
    receives: the runner's train split, its dev-time evaluation splits, `-t` of `-m evaluate`."""
    expert = f"{_expert(task)}:DownstreamExpert"
    return (Evaluated(("runner", "train_dataloader"), expert, DATALOADER),
            Evaluated(("runner", "eval_dataloaders", "*"), expert, DATALOADER),
            Evaluated(("args", "evaluate_split"), expert, DATALOADER, modes=("evaluate",)))


# Every task's runner: s3prl/optimizers.py, schedulers.py, run_downstream.py.
RUNNER = (
    Evaluated(("optimizer", "name"), "s3prl.optimizers", GETTER),
    Evaluated(("scheduler", "name"), "s3prl.schedulers", GETTER),
    Evaluated(("args", "mode"), "s3prl.run_downstream", CHOICE, choices=RUNNER_MODES),
)

# The SUPERB tasks' experts (s3prl/downstream/<task>/expert.py, model.py).
TASKS: dict[str, tuple[Evaluated, ...]] = {
    "asr": (
        Evaluated(("downstream_expert", "modelrc", "select"), _expert("asr"), CLASS, options=("{}",)),
        Evaluated(("downstream_expert", "datarc", "decoder_args", "unk_weight"), _expert("asr"), NUMBER),
    ),
    "ctc": (
        Evaluated(("downstream_expert", "model", "select"), _expert("ctc"), CLASS, options=("{}",)),
        Evaluated(("downstream_expert", "metric", "*"), _expert("ctc"), FUNCTION),
    ),
    "speech_commands": (
        Evaluated(("downstream_expert", "modelrc", "select"), _expert("speech_commands"), CLASS, options=("{}",)),
    ),
    "voxceleb1": (
        Evaluated(("downstream_expert", "modelrc", "select"), _expert("voxceleb1"), CLASS, options=("{}",)),
        *_split_names("voxceleb1"),
    ),
    "fluent_commands": (
        Evaluated(("downstream_expert", "modelrc", "select"), _expert("fluent_commands"), CLASS, options=("{}",)),
        *_split_names("fluent_commands"),
    ),
    "emotion": (
        Evaluated(("downstream_expert", "modelrc", "select"), _expert("emotion"), CLASS, options=("{}",)),
        *_split_names("emotion"),
    ),
    "sv_voxceleb1": (
        Evaluated(("downstream_expert", "modelrc", "ObjectiveLoss"), _expert("sv_voxceleb1"), CLASS,
                  options=("LossConfig", "{}")),
        Evaluated(("downstream_expert", "modelrc", "module"), "s3prl.downstream.sv_voxceleb1.model", CLASS,
                  options=("module_config", "{}")),
        Evaluated(("downstream_expert", "modelrc", "agg_module"), "s3prl.downstream.sv_voxceleb1.model", CLASS),
        Evaluated(("downstream_expert", "modelrc", "utter_module"), "s3prl.downstream.sv_voxceleb1.model", CLASS),
    ),
    "diarization": (),  # evaluates no config value
    "quesst14_dtw": (),
}

# Classes a config can choose that evaluate keys of their own options (module.qualname -> keys, relative
# to those options). voxceleb1/model.py's and fluent_commands/model.py's `Model` and `UtterLinear` also
# evaluate strings, but no expert's namespace holds them, so no config can choose them.
CONSTRUCTORS: dict[str, tuple[Evaluated, ...]] = {
    "s3prl.downstream.model.UtteranceLevel": (
        Evaluated(("pooling",), "s3prl.downstream.model", CLASS),
        Evaluated(("pre_net", "select"), "s3prl.downstream.model", CLASS, options=("{}",)),
        Evaluated(("post_net", "select"), "s3prl.downstream.model", CLASS, options=("{}",)),
    ),
    "s3prl.downstream.emotion.model.DeepModel": (
        Evaluated(("model_type",), "s3prl.downstream.emotion.model", CLASS, options=()),
    ),
}


def covered(task: str | None) -> bool:
    """Whether `TASKS` lists the evaluated keys of s3prl task `task`."""
    return task in TASKS


@functools.lru_cache(maxsize=None)
def _namespace(namespace: str):
    """The module (or `module:Class`) whose attributes an `eval` of the namespace sees, imported after
    `patches.apply()` (s3prl's task modules import only on the patched stack)."""
    from s3prl_star.integration import patches

    patches.apply()
    module_name, _, class_name = namespace.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name) if class_name else module


def _qualified(value: Any) -> str:
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"


@functools.lru_cache(maxsize=None)
def _evaluates_strings(cls: type) -> bool:
    """Whether the body of s3prl class `cls` calls `eval` (an unreadable source counts as yes)."""
    try:
        return bool(_EVAL_CALL.search(inspect.getsource(cls)))
    except (OSError, TypeError):
        return True


def evaluating_classes(cls: type) -> list[type]:
    """The s3prl classes in `cls`'s MRO whose code calls `eval`: they must be in `CONSTRUCTORS`."""
    return [base for base in cls.__mro__ if base.__module__.startswith("s3prl.") and _evaluates_strings(base)]


def _is_number_expression(value: Any) -> bool:
    """A number, or text that evaluates to one without running anything: '1e-3', '-5', '-math.inf'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    try:
        node = ast.parse(value, mode="eval").body
    except (SyntaxError, ValueError):
        return False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        node = node.operand
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math"
            and node.attr in ("inf", "nan"))


def _target(entry: Evaluated, name: str) -> str:
    """The attribute of the namespace an `eval` for `entry` reads when the value is `name`."""
    return {GETTER: f"get_{name}", DATALOADER: f"get_{name}_dataloader"}.get(entry.kind, name)


def _accepts(entry: Evaluated, value: Any) -> bool:
    """Whether `value` is what the code evaluating `entry` expects (see the module docstring)."""
    if entry.kind == NUMBER:
        return _is_number_expression(value)
    if entry.kind == CHOICE:
        return value in entry.choices
    if not isinstance(value, str) or not value.isidentifier() or value.startswith("__"):
        return False
    attribute = getattr(_namespace(entry.namespace), _target(entry, value), None)
    if entry.kind == CLASS:
        import torch

        # a class that evaluates its options is accepted only where CONSTRUCTORS checks them
        return (inspect.isclass(attribute) and issubclass(attribute, torch.nn.Module)
                and all(_qualified(base) in CONSTRUCTORS for base in evaluating_classes(attribute)))
    if entry.kind == FUNCTION:
        return inspect.isfunction(attribute)
    return callable(attribute)  # GETTER: a function; DATALOADER: a method


def allowed(entry: Evaluated) -> list[str]:
    """The values `entry` accepts, for the error message (numbers: a description)."""
    if entry.kind == NUMBER:
        return ["a number (or '-math.inf')"]
    if entry.kind == CHOICE:
        return list(entry.choices)
    namespace = _namespace(entry.namespace)
    prefix, suffix = {GETTER: ("get_", ""), DATALOADER: ("get_", "_dataloader")}.get(entry.kind, ("", ""))
    names = [name[len(prefix):len(name) - len(suffix)] for name in dir(namespace)
             if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)]
    return sorted(name for name in names if _accepts(entry, name))


def _found(mapping: Any, path: tuple[str, ...], where: str) -> Iterator[tuple[str, Any, dict]]:
    """(key path in words, value, the mapping holding it) of each value at `path` under `mapping`."""
    if not path or not isinstance(mapping, (dict, list)):
        return
    head, rest = path[0], path[1:]
    if head == "*":
        items = enumerate(mapping) if isinstance(mapping, list) else ()
        for index, item in items:
            if rest:
                yield from _found(item, rest, f"{where}[{index}]")
            else:
                yield f"{where}[{index}]", item, mapping
        return
    if not isinstance(mapping, dict) or head not in mapping:
        return  # absent: s3prl uses its default (or fails looking it up); nothing of the config runs
    name = f"{where}.{head}" if where else head
    if rest:
        yield from _found(mapping[head], rest, name)
    else:
        yield name, mapping[head], mapping


def _options(holder: dict, entry: Evaluated, value: str, where: str) -> tuple[Any, str]:
    """The options the class chosen by `value` receives from the config, and their key path in words."""
    node: Any = holder
    parent = where.rsplit(".", 1)[0] if "." in where else ""
    for field in entry.options or ():
        field = value if field == "{}" else field
        node = node.get(field, {}) if isinstance(node, dict) else {}
        parent = f"{parent}.{field}" if parent else field
    return node, parent


def _check_entries(entries: tuple[Evaluated, ...], root: dict, args: dict, source: str, prefix: str,
                   seen: frozenset = frozenset()) -> None:
    """`entries` on the mapping `root` (key paths in words from `prefix`); `seen`: the (options, class)
    pairs being checked further up, so a class choosing itself on the same options (which s3prl would
    recurse on until it fails) or a cyclic yaml is checked once."""
    for entry in entries:
        if entry.modes and args.get("mode") not in entry.modes:
            continue
        top, path = (args, entry.path[1:]) if entry.path[0] == "args" and not prefix else (root, entry.path)
        start = "args" if top is args else prefix
        for where, value, holder in _found(top, path, start):
            if not _accepts(entry, value):
                namespace = entry.namespace.replace(":", ".")
                raise ConfigError(
                    f"{ARGS_SOURCE if top is args else source}: {where}: found {value!r}; s3prl evaluates it as "
                    f"Python in {namespace}, so it must be one of: {', '.join(allowed(entry))}")
            if entry.kind != CLASS or entry.options is None:
                continue
            options, options_where = _options(holder, entry, value, where)
            if not isinstance(options, dict):
                continue  # s3prl fails passing them as keyword arguments, before any eval of them
            for base in evaluating_classes(getattr(_namespace(entry.namespace), value)):
                key = (id(options), _qualified(base))
                if key not in seen:
                    _check_entries(CONSTRUCTORS[key[1]], options, args, source, options_where, seen | {key})


def check_evaluated(task: str | None, config: dict, args: dict, source: str) -> None:
    """Every value of `config` (and of the runner arguments `args`: `mode`, `evaluate_split`) that s3prl
    evaluates for task `task` is what its code expects; ConfigError naming `source`, the key path, the
    value found and the accepted values otherwise. Tasks outside `TASKS` get the runner's keys only
    (`covered` says which)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of config sections, found {type(config).__name__}")
    _check_entries(RUNNER + TASKS.get(task, ()), config, args, source, "")
