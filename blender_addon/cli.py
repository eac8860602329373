"""The add-on's command line, as a file Blender can run: `blender -b shot.blend -P cli.py -- ...`.

The command itself lives in commands/cli.py (see there for every option); this file is the
entry point that works both ways it is started:

    blender -b shot.blend --python-exit-code 1 -P /path/to/animate_anyone/cli.py -- --out DIR ...
    python -m blender_addon.cli shot.blend -- --out DIR ...

Blender 4.2+ also runs it as a registered command once the extension is enabled:
`blender -c animate_anyone generate shot.blend --out DIR ...` (see commands/blender_command.py).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (blender -P .../cli.py): there is no package around this module, so
    # relative imports would fail. Import the package this file belongs to, under the name
    # Blender loaded it with when the extension is enabled (bl_ext.<repo>.<id>), else by
    # its folder name, and hand over to its command line.
    import importlib
    import pathlib

    _folder = pathlib.Path(__file__).resolve().parent
    _package = ""
    for _name, _module in list(sys.modules.items()):
        _file = getattr(_module, "__file__", None)
        if _file and pathlib.Path(_file).resolve() == _folder / "__init__.py":
            _package = _name
            break
    if not _package:
        sys.path.insert(0, str(_folder.parent))
        _package = _folder.name
    try:
        _cli = importlib.import_module(f"{_package}.commands.cli")
    except ImportError as _exc:  # e.g. pose_bridge missing: the extension is not installed and enabled
        print(f"error: cannot load the add-on from {_folder} ({_exc}); install and enable the Animate Anyone "
              f"extension in this Blender", file=sys.stderr)
        sys.exit(1)
    _argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    sys.exit(_cli.main(_argv))

if __name__ == "__main__":  # python -m blender_addon.cli
    from blender_addon.commands.cli import main

    sys.exit(main())
