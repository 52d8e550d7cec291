"""Command lines from config dataclasses: each option's default, help, bounds and choices written once, in its field.

    @dataclass
    class Config:
        num: int = option(100, "faces to write", at_least(1))
    parser = build_parser(Config, __doc__)
    cfg = parse(Config, parser, argv)      # bad values: one line on stderr and exit 2

A field's type gives the argument's type; a bool is a flag (--x, or --x / --no-x when its
default is None, meaning "decided later"); a list takes one or more values of its `item` type (as
the command's positional arguments with positional=True). Checks return what is wrong after the flag's name
("must be at least 1, got 0"), or None. No Paddle here: pretreat.py uses it too.
"""
import argparse
import contextlib
from dataclasses import field, fields


def option(default, help, check=None, choices=None, **more):
    """A config field carrying its option: default, --help text, check, choices (or a function giving them),
    and any other facts a script keeps about it (`more`, in the field's metadata)."""
    return field(default=default, metadata=dict(help=help, check=check, choices=choices, **more))


def flag(name):
    return "--" + name.replace("_", "-")


def default_help(f):
    """The field's help text and its default, unless None (the text says what happens) or a flag's False."""
    return f.metadata["help"] + ("" if f.default is None or f.default is False else f" (default: {f.default})")


def build_parser(config, doc, help_text=default_help, **kwargs):
    """An ArgumentParser with one option per field of the dataclass `config`; `doc` (with examples) is its --help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    for f in fields(config):
        if f.type is bool:
            action = argparse.BooleanOptionalAction if f.default is None else "store_true"
            parser.add_argument(flag(f.name), action=action, default=f.default, help=help_text(f))
        elif f.type is list and f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="+", type=f.metadata.get("item", str), help=f.metadata["help"],
                                metavar=f.metadata.get("metavar"))
        elif f.type is list:
            parser.add_argument(flag(f.name), nargs="+", type=f.metadata.get("item", str), default=f.default,
                                help=help_text(f), metavar=f.metadata.get("metavar"))
        else:
            choices = f.metadata["choices"]
            parser.add_argument(flag(f.name), type=f.type, default=f.default, help=help_text(f),
                                choices=choices() if callable(choices) else choices)
    return parser


def parse(config, parser, argv=None):
    """The `config` the command line describes; a value its check refuses ends the program with one line."""
    cfg = config(**vars(parser.parse_args(argv)))
    for f in fields(config):
        value, check = getattr(cfg, f.name), f.metadata["check"]
        problem = check(value) if check and value is not None else None
        if problem:
            parser.error(f"{flag(f.name)} {problem}")
    return cfg


@contextlib.contextmanager
def refusing(parser, *errors):
    """Within the block, one of `errors` (a user's mistake, whose message says what to do) ends the
    program with that message on one line and exit code 2, as a bad option does; never a traceback."""
    try:
        yield
    except errors as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


# ----------------------------------------------------------------------------- checks

def at_least(low):
    words = "0 or more" if low == 0 else f"at least {low}"
    return lambda v: None if v >= low else f"must be {words}, got {v}"


def positive(v):
    return None if v > 0 else f"must be positive, got {v}"


def within(low, high, brackets):
    """Bounds check: `brackets` is '()', '(]', '[)' or '[]', as in interval notation."""
    def check(v):
        above = v > low if brackets[0] == "(" else v >= low
        below = v < high if brackets[1] == ")" else v <= high
        return None if above and below else f"must be in {brackets[0]}{low}, {high}{brackets[1]}, got {v}"
    return check
