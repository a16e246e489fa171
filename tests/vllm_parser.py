"""vLLM 0.32's own argument parser, for the tests of the argument contract
(tests/operator/engine/test_vllm_args.py) and of the image's settings (tests/images/test_settings.py).

Import both names into a test module: `vllm_parser` is a module-scoped fixture.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def vllm_parser():
    """The exact parser `python -m vllm.entrypoints.openai.api_server` builds (no server)."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(description="test"))


def parse(parser, args):
    """Parse like vLLM's main(); argparse errors become a failed assertion with the message."""
    try:
        return parser.parse_args(list(args))
    except SystemExit as exc:  # argparse reports through sys.exit
        raise AssertionError(f"vLLM's parser refused {args}") from exc
