"""A console people can read: third-party notices that repeat every step are dropped once at
start-up, each matched by its message and the module that emits it (no blanket filter on rank 0),
and ranks other than 0 print errors only (rank 0 prints the same warnings once).
"""

import logging
import warnings

from .launch import maybe_rank_zero

# torch renamed these collectives; DeepSpeed ZeRO-3 calls the old names every step, and the
# warnings registry is reset often enough that they repeat all run long (attributed to torch's
# c10d_logger wrapper, which calls the deprecated function; tests/test_quiet.py).
DEPRECATED_COLLECTIVES = (
    (r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning, r"torch\.distributed\.c10d_logger"),
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning, r"torch\.distributed\.c10d_logger"),
)


class _DropText(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


class _ErrorsOnly(logging.Filter):
    def filter(self, record) -> bool:
        return record.levelno >= logging.ERROR


# (logger, filter): accelerate reports that the DeepSpeed config's accumulation steps win over
# its own plugin's default of 1; the DeepSpeed value is `auto`, filled from our config. One
# instance each, so calling quiet_console again (tests call main() repeatedly) adds nothing.
LOG_NOTICES = (("accelerate.accelerator", _DropText("Gradient accumulation steps mismatch")),)
_ERRORS_ONLY = _ErrorsOnly()


def quiet_console():
    """First thing in main(), before the libraries log anything (calling it again adds nothing)."""
    for message, category, module in DEPRECATED_COLLECTIVES:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for logger, notice in LOG_NOTICES:
        logging.getLogger(logger).addFilter(notice)
    if maybe_rank_zero():
        return
    warnings.simplefilter("ignore")
    # DeepSpeed resets its logger's level when imported; a filter on the logger survives that
    logging.getLogger("DeepSpeed").addFilter(_ERRORS_ONLY)
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    from datasets.utils import disable_progress_bars
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets_logging.set_verbosity_error()
    disable_progress_bars()
