"""Errors a user can cause in the add-on. Each message says what is wrong and what to do.

The panel's operators report these as Blender errors; the command-line script and the
batch module print them as one line and exit non-zero.
"""


class AddonError(Exception):
    """A problem with the scene or the settings that the user can fix.

    Examples: no armature chosen, a camera that is not a camera, required bones that
    are not mapped, an empty frame range, a backend run that failed.
    """
