r"""Run Defuse end to end: train, identify, distil, correct, and write the report.

    python -m experiments.run_defuse --workdir=/tmp/defuse_mnist
    python -m experiments.run_defuse --workdir=/tmp/defuse_test \
        --config=experiments/configs/mnist5k.py:test --config.correct.lam=0.3

Run the same command again to resume a killed run. A workdir written with another
config is rejected unless --allow_config_change is passed.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from defuse_jax import pipeline
from defuse_jax.configuration import InputError  # noqa: F401 - re-exported
from experiments.cli import exit_on_known_errors, start_binary

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mnist5k.py")

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, arrays and the report."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    _DEFAULT_CONFIG,
    "Experiment config file; append :test for the CPU test variant.",
    lock_config=True,
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Accept a workdir written with a different config or dataset: recompute the "
    "stages that depend on what changed and reuse the others.",
)
flags.mark_flags_as_required(["workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """Parse flags like absl does, but end every parse error with one `error:` line.

    ml_collections raises AttributeError or KeyError from inside flag parsing when
    --config.FIELD names no field of the config, and the config file's own errors
    (such as an unknown variant) as ValueError.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        # absl puts the traceback of an error in the --config file into the message;
        # its last line names the error.
        last_line = [line for line in str(error).splitlines() if line.strip()][-1]
        sys.exit(f"error: {last_line.rstrip('.')}. Pass --helpshort for the flags.")
    except (ValueError, TypeError) as error:
        # Raised while loading the --config file, for example for an unknown variant.
        sys.exit(f"error: invalid --config: {error}")
    except (AttributeError, KeyError) as error:
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        hint = re.search(r'Did you mean \\*"(\w+)\\*"', str(error))
        sys.exit(
            f"error: the config has no field named by {', '.join(overrides)}"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
            + "; check the spelling against the config file."
        )


def main(argv: list[str]) -> None:
    start_binary(argv)
    with exit_on_known_errors():
        pipeline.run(
            _CONFIG.value,
            _WORKDIR.value,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
