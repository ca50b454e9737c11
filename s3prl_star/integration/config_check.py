"""Unknown keys and wrong value types in the configs this project passes to s3prl's runners.

s3prl's runners read their yaml with `config[...]` and `.get(...)`: a misspelt key is silently
ignored (`totl_steps` trains for the default) and a quoted number fails far away
(`'<' not supported`). Checked here, before a runner starts, with errors naming the key, what was
found and what is allowed:
- `check_pretrain_config`: the runner yaml of `s3prl-star pretrain` (sections `runner`,
  `optimizer`, `scheduler`, `pretrain_expert.datarc`);
- `check_downstream_config`: a downstream config (`-c`, and the `-o config.*` overrides) against the
  schema of its task, derived from the shipped recipes (`downstream_schema`).
The optimizer and scheduler sections are checked against the signatures of the s3prl functions
they name (`optimizers.get_<name>`, `schedulers.get_<name>`), which receive their keys.

`check_override` is the one check every `-o` string passes before s3prl sees it (`s3prl-star
downstream`, `pretrain`, and DATA.yaml's `overrides` in `s3prl-star superb`): s3prl's
`utility.helper.override` passes each value to `eval`, so a value must be data, never code
(`evaluated_keys` checks the config values s3prl's experts evaluate later).
"""
from __future__ import annotations

import ast
import builtins
import copy
import functools
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from s3prl_star import resources

# each recipe's header names its task: "(s3prl `-d asr`)", "(s3prl `-d ctc -c ...`)"
_RECIPE_TASK = re.compile(r"s3prl `-d (\w+)")

# What a value must be; `type(None)` in a tuple allows null.
INTEGER = (int,)
NUMBER = (int, float)
BOOLEAN = (bool,)
STRING = (str,)
LIST = (list, tuple)

# s3prl's pretrain runner (pretrain/runner.py) reads exactly these `runner` keys.
PRETRAIN_RUNNER_TYPES = {
    "n_epochs": INTEGER, "total_steps": INTEGER, "gradient_clipping": NUMBER,
    "gradient_accumulate_steps": INTEGER, "log_step": INTEGER, "save_step": INTEGER, "max_keep": INTEGER,
    "fp16": BOOLEAN,
}
# distill/star_hubert/pretrain_expert.py's `pretrain_expert.datarc` (max_length: samples, or null).
DATARC_TYPES = {
    "libri_root": STRING, "file_path": STRING, "sets": LIST, "train_batch_size": INTEGER,
    "max_length": (int, type(None)), "num_workers": INTEGER, "skip_unreadable": BOOLEAN,
}


class ConfigError(ValueError):
    """A config key is unknown or its value has the wrong type."""


def describe(types: tuple) -> str:
    """"an integer", "a number or null", ...: what `check_value` accepts, in words."""
    names = {int: "a number" if float in types else "an integer", float: "a number", bool: "true/false",
             str: "a string", list: "a list", tuple: "a list", dict: "a mapping", type(None): "null"}
    return " or ".join(dict.fromkeys(names[kind] for kind in types))


def check_value(value: Any, types: tuple, where: str) -> None:
    """`value` is one of `types` (bool is not an integer; an integer is a number)."""
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ConfigError(f"{where}: found {value!r} ({type(value).__name__}); expected {describe(types)}")


def check_section(section: Any, types: dict[str, tuple], where: str) -> None:
    """`section` is a mapping whose keys are all in `types` and whose values have those types."""
    check_value(section, (dict,), where)
    for key, value in section.items():
        if key not in types:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(types))}")
        check_value(value, types[key], f"{where}.{key}")


def _parameter_types(function) -> dict[str, tuple]:
    """{parameter: accepted types} of `function`'s named parameters, from their defaults (any type
    when there is none or it is null)."""
    types = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if isinstance(default, bool):
            types[name] = BOOLEAN
        elif isinstance(default, (int, float)):
            types[name] = NUMBER
        elif isinstance(default, (list, tuple)):
            types[name] = LIST
        elif isinstance(default, str):
            types[name] = STRING
        else:
            types[name] = (object,)
    return types


def optimizer_types(section: dict, module, where: str) -> dict[str, tuple]:
    """The keys an s3prl `optimizer` section may hold: `name` and what `get_<name>` takes (for
    TorchOptim: `torch_optim_name` and the torch optimizer's own arguments)."""
    name = section.get("name")
    function = getattr(module, f"get_{name}", None)
    if not isinstance(name, str) or function is None:
        known = sorted(attribute[4:] for attribute in dir(module) if attribute.startswith("get_")
                       and attribute not in ("get_optimizer", "get_grouped_parameters"))
        raise ConfigError(f"{where}.name: found {name!r}; expected one of {', '.join(known)}")
    types = {"name": STRING, **_parameter_types(function)}
    for internal in ("model_params", "total_steps"):
        types.pop(internal, None)
    if name == "TorchOptim":
        optimizer_class = getattr(torch.optim, str(section.get("torch_optim_name")), None)
        if not (inspect.isclass(optimizer_class) and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ConfigError(f"{where}.torch_optim_name: found {section.get('torch_optim_name')!r}; "
                              "expected a torch.optim optimizer class name (e.g. AdamW)")
        types.update(_parameter_types(optimizer_class.__init__))
        types.pop("self", None)
        types.pop("params", None)
        types["torch_optim_name"] = STRING
    return types


def scheduler_types(section: dict, module, where: str) -> dict[str, tuple]:
    """The keys an s3prl `scheduler` section may hold: `name` and what `get_<name>` takes."""
    name = section.get("name")
    function = getattr(module, f"get_{name}", None)
    if not isinstance(name, str) or function is None or name == "scheduler":
        known = sorted(attribute[4:] for attribute in dir(module)
                       if attribute.startswith("get_") and attribute != "get_scheduler")
        raise ConfigError(f"{where}.name: found {name!r}; expected one of {', '.join(known)}")
    types = {"name": STRING, **_parameter_types(function)}
    for internal in ("optimizer", "num_training_steps"):
        types.pop(internal, None)
    return types


def _s3prl_module(name: str):
    """s3prl's `optimizers` / `schedulers` module (importable as `s3prl.<name>`)."""
    return importlib.import_module(f"s3prl.{name}")


def check_optimizer_and_scheduler(config: dict, source: str) -> None:
    optimizers = _s3prl_module("optimizers")
    check_value(config.get("optimizer"), (dict,), f"{source}: optimizer")
    check_section(config["optimizer"], optimizer_types(config["optimizer"], optimizers, f"{source}: optimizer"),
                  f"{source}: optimizer")
    if config.get("scheduler"):
        schedulers = _s3prl_module("schedulers")
        check_value(config["scheduler"], (dict,), f"{source}: scheduler")
        types = scheduler_types(config["scheduler"], schedulers, f"{source}: scheduler")
        check_section(config["scheduler"], types, f"{source}: scheduler")


def check_pretrain_config(config: dict, source: str) -> None:
    """The runner config of `s3prl-star pretrain` (after `-o` overrides)."""
    check_section(config, {"runner": (dict,), "optimizer": (dict,), "scheduler": (dict, type(None)),
                           "pretrain_expert": (dict,)}, source)
    for required in ("runner", "optimizer", "pretrain_expert"):
        if required not in config:
            raise ConfigError(f"{source}: missing section {required!r}")
    check_section(config["runner"], PRETRAIN_RUNNER_TYPES, f"{source}: runner")
    check_optimizer_and_scheduler(config, source)
    check_section(config["pretrain_expert"], {"datarc": (dict,)}, f"{source}: pretrain_expert")
    check_section(config["pretrain_expert"].get("datarc"), DATARC_TYPES, f"{source}: pretrain_expert.datarc")
    if not all(isinstance(name, str) for name in config["pretrain_expert"]["datarc"].get("sets", [])):
        raise ConfigError(f"{source}: pretrain_expert.datarc.sets: expected a list of CSV names (strings)")


def shipped_recipes() -> list[Path]:
    return sorted(resources.recipes().glob("*/config.yaml"))


def recipe_task(path: Path) -> str | None:
    """The s3prl `-d` task a recipe's header names."""
    match = _RECIPE_TASK.search(path.read_text())
    return match.group(1) if match else None


def _merge(schema: dict, config: dict) -> None:
    """Add `config`'s key tree to `schema` (a leaf keeps the first non-null value, as its type's example)."""
    for key, value in config.items():
        if isinstance(value, dict):
            node = schema.setdefault(key, {})
            if isinstance(node, dict):
                _merge(node, value)
        elif schema.get(key) is None:
            schema[key] = value


def downstream_schema(task: str) -> dict | None:
    """The key tree every shipped recipe of `task` holds (merged), with example values; None when
    no recipe is shipped for `task`. `optimizer` and `scheduler` are left out: they are checked
    against the s3prl functions they name."""
    schema: dict = {}
    found = False
    for path in shipped_recipes():
        if recipe_task(path) == task:
            found = True
            _merge(schema, yaml.safe_load(path.read_text()))
    schema.pop("optimizer", None)
    schema.pop("scheduler", None)
    return schema if found else None


def _category(value: Any) -> tuple:
    """The types a value may be replaced with: a number for a number, a list for a list, ..."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, (list, tuple)):
        return LIST
    if isinstance(value, dict):
        return (dict,)
    return STRING if isinstance(value, str) else (object,)


def check_against_schema(value: Any, schema: Any, source: str, path: str, recipes: str) -> None:
    """`value` (at key path `path` of `source`) has only keys of `schema`, recursively, and the type
    of its example values."""
    where = f"{source}: {path}" if path else source
    if isinstance(schema, dict):
        check_value(value, (dict,), where)
        for key, item in value.items():
            if key not in schema:
                raise ConfigError(f"{where}: unknown key {key!r}; allowed ({recipes}): {', '.join(map(str, schema))}")
            check_against_schema(item, schema[key], source, f"{path}.{key}" if path else str(key), recipes)
    elif schema is not None and value is not None:
        check_value(value, _category(schema), where)


def check_downstream_config(config: dict, task: str, source: str) -> None:
    """A downstream config (or the part `-o` overrides) for s3prl task `task`, against the shipped
    recipes of that task; tasks without a shipped recipe are not checked."""
    schema = downstream_schema(task)
    if schema is None:
        return
    names = f"the keys of the shipped {task} recipes"
    rest = {key: value for key, value in config.items() if key not in ("optimizer", "scheduler")}
    check_against_schema(rest, schema, source, "", names)
    if "optimizer" in config or "scheduler" in config:
        _check_partial_optimizer_and_scheduler(config, task, source)


def _check_partial_optimizer_and_scheduler(config: dict, task: str, source: str) -> None:
    """optimizer / scheduler of `config`, completed with the recipe's when only some keys are given (`-o`)."""
    base: dict = {}
    for path in shipped_recipes():
        if recipe_task(path) == task:
            recipe = yaml.safe_load(path.read_text())
            base = {"optimizer": recipe.get("optimizer", {}), "scheduler": recipe.get("scheduler")}
            break
    merged = {section: ({**(base.get(section) or {}), **config[section]}
                        if isinstance(config.get(section), dict) else config.get(section, base.get(section)))
              for section in ("optimizer", "scheduler")}
    check_optimizer_and_scheduler(merged, source)


OVERRIDE_EXPECTED = ("expected a Python literal (a number, True/False/None, 'quoted text', a list or dict of "
                     "them) or a plain path")


@functools.lru_cache(maxsize=1)
def names_s3prl_override_resolves() -> frozenset[str]:
    """The bare names `eval` resolves inside s3prl's `utility.helper.override` (run_pretrain.py imports the
    same file as `utility.helper`): the builtins, the module's globals and the function's own locals
    (`args`, `config`, the loop variables). Any other bare name raises NameError there, and s3prl keeps
    the text as a string."""
    from s3prl.utility import helper

    return frozenset(dir(builtins)) | frozenset(vars(helper)) | frozenset(helper.override.__code__.co_varnames)


def literal_or_text(text: str) -> tuple[bool, Any]:
    """(True, the value s3prl's `override` gives `text`) when evaluating it runs no code: a Python literal;
    text that does not compile as an expression (a path such as /data/LibriSpeech: s3prl keeps the text);
    a bare name eval cannot resolve (`fold1`: the text). (False, None) for anything else: calls,
    attributes, operators, subscripts, lambdas, names that resolve."""
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # eval cannot compile it either
        return True, text
    if isinstance(tree.body, ast.Name) and tree.body.id not in names_s3prl_override_resolves():
        return True, text
    return False, None


def split_override(text: str, source: str) -> list[tuple[list[str], str]]:
    """The assignments of an s3prl `-o` string as ([first field, *fields], value text), split as s3prl's
    `override` splits them (',,' between assignments, one '=' in each, both sides stripped); ConfigError
    for an assignment s3prl would reject or silently ignore (no '=', a key not under `args.` / `config.`)."""
    assignments = []
    for option in text.split(",,"):
        option = option.strip()
        parts = option.split("=")
        if len(parts) != 2:
            raise ConfigError(f"{source}: {option!r}: expected one KEY=VALUE assignment (assignments are "
                              "separated by ',,'; a value holding '=' cannot pass through s3prl's -o)")
        key, value = parts[0].strip(), parts[1].strip()
        fields = key.split(".")
        if fields[0] not in ("args", "config") or len(fields) < 2 or fields[0] == "args" and len(fields) != 2:
            raise ConfigError(f"{source}: {option!r}: expected a key config.SECTION.KEY... or args.NAME "
                              "(s3prl ignores any other key)")
        assignments.append((fields, value))
    return assignments


def check_override(text: str | None, source: str) -> None:
    """An s3prl `-o` string is data: every value a literal, a plain path or an unresolvable bare name, so
    s3prl's `eval` of it runs nothing. ConfigError naming the assignment otherwise. `None` / "none" (any
    case) is what s3prl skips."""
    if text is None or text.lower() == "none":
        return
    for fields, value in split_override(text, source):
        if not literal_or_text(value)[0]:
            raise ConfigError(f"{source}: {'.'.join(fields)}={value}: s3prl evaluates -o values as Python, and "
                              f"this is code; {OVERRIDE_EXPECTED}: quote it as {value!r} to pass a string")


def override_assignments(text: str | None, source: str = "-o") -> list[tuple[list[str], Any]]:
    """The assignments of an s3prl `-o` string, checked by `check_override`, as ([first field, *fields],
    the value s3prl gives it); none for `None` / "none"."""
    check_override(text, source)
    if text is None or text.lower() == "none":
        return []
    return [(fields, literal_or_text(value)[1]) for fields, value in split_override(text, source)]


def apply_override(args: dict, config: dict, text: str | None, source: str = "-o") -> tuple[dict, dict]:
    """Copies of `args` and `config` with the `-o` string's assignments made as s3prl's `override` makes
    them, in order: `args.NAME` sets an argument, `config.A.B` creates the missing sections and sets
    the leaf (a mapping value replaces the section, it is not merged)."""
    args, config = dict(args), copy.deepcopy(config)
    for (first, *fields), value in override_assignments(text, source):
        if first == "args":
            args[fields[0]] = value
            continue
        node = config
        for index, field in enumerate(fields[:-1]):
            node = node.setdefault(field, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: config.{'.'.join(fields)}: config.{'.'.join(fields[:index + 1])} "
                                  f"is {node!r}, not a section")
        node[fields[-1]] = value
    return args, config


def overrides_as_config(override: str) -> dict:
    """The `config.*` part of an s3prl `-o` string as a nested dict, values parsed as s3prl's
    `utility.helper.override` does (after `check_override`)."""
    return apply_override({}, {}, override)[1]
