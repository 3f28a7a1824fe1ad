"""A finished run resubmitted with `--resume_from_checkpoint auto` (a requeued job) is left alone
and exits 0; when the command asks for something else than the run did (another data file, seed,
--max_steps...), one notice line names the settings that differ (`RunSpec.diff`), so a changed
sweep point is not mistaken for a result."""

import sys

from ..core import launch
from ..core.errors import UserError
from .run_spec import RunSpec


def finished_run_notice(output_dir, opts, config) -> str | None:
    """The notice for a finished run this command would have run differently (None: same run, or
    a finished run or command whose settings cannot be read: the run is left alone either way)."""
    try:
        finished = RunSpec.read(output_dir, legacy=True)
        diff = finished.diff(RunSpec.from_options(opts, config)) if finished is not None else []
    except UserError:
        return None
    if not diff:
        return None
    return (f"notice: {output_dir} holds a finished run made with other settings; nothing was run or changed. "
            f"Differs: {'; '.join(map(str, diff))}. Use another --output_dir (or --overwrite_output_dir) to train "
            f"these")


def already_finished(opts, config) -> None:
    """What a command says on a folder that holds its run finished (rank 0)."""
    if launch.rank() == 0:
        print(f"already finished: {opts.output_dir}", flush=True)
        notice = finished_run_notice(opts.output_dir, opts, config)
        if notice:
            print(notice, file=sys.stderr, flush=True)
