"""The extra-args shape check knows which vLLM flags take values: a bare token that no flag takes
becomes vLLM's positional model_tag, which replaces --model (found by test_properties' smuggling
property: `--enforce-eager evil/model`)."""
import argparse

import pytest

from scibox_operator.engine.vllm_args import validate_extra_args
from scibox_operator.engine.vllm_flags import MANY_VALUE_FLAGS, NO_VALUE_FLAGS


@pytest.mark.parametrize("args", [
    ["--enforce-eager", "evil/model"],
    ["--seed", "1", "evil/model"],
    ["--seed=1", "evil/model"],
    ["--no-enable-log-requests", "x"],
    ["-O3", "evil/model"],
])
def test_a_token_no_flag_takes_is_refused(args):
    problems = validate_extra_args(args)
    assert problems and "would read it as the model" in problems[0], problems


@pytest.mark.parametrize("args", [
    ["--enforce-eager", "--kv-cache-dtype-skip-layers", "0", "1", "2"],
    ["--seed", "1", "--enforce-eager"],
    ["--max-logprobs", "5"],
    ["-O", "3"],
])
def test_flags_with_their_values_pass(args):
    assert validate_extra_args(args) == []


@pytest.mark.vllm
def test_the_tables_match_the_installed_vllm_parser():
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(description="flags"))
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    no_value = {s for a in options if a.nargs == 0 for s in a.option_strings}
    many = {s for a in options if a.nargs in ("+", "*") or (isinstance(a.nargs, int) and a.nargs > 1)
            for s in a.option_strings}
    assert NO_VALUE_FLAGS - {"-h", "--help"} == no_value
    assert MANY_VALUE_FLAGS == many
    # and vLLM itself does take a stray token as the model: what the check prevents
    assert parser.parse_args(["--model=m", "--enforce-eager", "evil/model"]).model_tag == "evil/model"
