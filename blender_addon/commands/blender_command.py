"""`blender -c animate_anyone ...`: the add-on's commands as a Blender command (Blender 4.2+).

Once the extension is enabled, Blender runs them without a script path:

    blender -c animate_anyone generate shot.blend --out /renders/sh010 --model /models/aa --frames 1-48
    blender -c animate_anyone batch sh010.blend sh020.blend --out /renders --model /models/aa

`generate` takes the options of `python -m blender_addon.cli` (commands/cli.py) and `batch`
those of `python -m blender_addon.commands.batch`; `-P cli.py` keeps working as before.
The exit code is the command's own: 0 done, 1 failed, 2 bad arguments.
"""

from __future__ import annotations

import sys

COMMAND_ID = "animate_anyone"
USAGE = (
    f"usage: blender -c {COMMAND_ID} generate SHOT.blend --out DIR [options]\n"
    f"       blender -c {COMMAND_ID} batch SHOT.blend... --out DIR [options]\n"
    f"       blender -c {COMMAND_ID} <command> --help   for the options of each"
)


def execute(argv: list[str]) -> int:
    """Run one of the add-on's commands with the arguments after the command id."""
    from . import batch, cli

    commands = {"generate": cli.main, "batch": batch.main}
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    run = commands.get(argv[0])
    if run is None:
        print(f"error: unknown command {argv[0]!r}; use one of {', '.join(commands)}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return run(list(argv[1:]))
    except SystemExit as exc:  # argparse's --help and bad arguments exit; Blender wants a return code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


_handle = None


def register() -> None:
    global _handle
    import bpy

    if _handle is None and hasattr(bpy.utils, "register_cli_command"):  # Blender 4.2+
        _handle = bpy.utils.register_cli_command(COMMAND_ID, execute)


def unregister() -> None:
    global _handle
    import bpy

    if _handle is not None:
        bpy.utils.unregister_cli_command(_handle)
        _handle = None
