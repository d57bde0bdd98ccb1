"""Writing files safely: every file the package writes goes through :func:`atomic_write`.

The rule is simple: a reader (or a user looking at the folder) sees either the old file or the new one,
never half of one; a failure leaves nothing behind; and nothing that the package did not write is
replaced. The trick is the same everywhere: write to a temporary name in the same folder, then
``os.replace`` it onto the final name, which the operating system does in one step.
"""

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def link_target(path: Path) -> Path:
    """Where a symbolic link at ``path`` points (following a chain of links); ``path`` itself when it is no link.

    Writing "to a link" means writing its target: the link stays, and whoever follows it sees the new file.
    Replacing the link itself by a file would leave its old target stale, and the user's link gone.
    """
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_replaceable(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse to write at ``path`` when something there must not be replaced; returns the path to write.

    Replaceable: nothing, or a regular file the user may write. Refused (``ValueError``, with what to do):
    a folder, a device, a pipe or socket, a read-only file, a broken link. A link to a file gives its target
    (see :func:`link_target`). Called before any expensive work, so a generation is not thrown away at the end.
    """
    path = Path(path)
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise ValueError(f"{str(path)!r} is not a {what} name; give a path such as outputs/trace.safetensors")
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{path} is a broken symbolic link; remove it or choose another {what} path")
    if not path.exists():
        return path
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path} is a folder, not a {what}; give a file name inside it, e.g. {path / 'trace.safetensors'}")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a device, pipe or socket); refusing to replace it: choose another {what} path")
    if not mode & stat.S_IWUSR:
        raise ValueError(f"{path} is read-only; refusing to replace it: make it writable (chmod u+w) or choose another path")
    return link_target(path)


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Make sure files can be created in ``folder`` (creating it if needed), before any expensive work.

    Raises ``ValueError`` naming the folder when it is a file, cannot be created or is not writable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; choose another place to write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".illustrated_sd-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"cannot write into {folder} ({err.strerror or err}); choose a folder you can write to") from err
    return folder


@contextmanager
def atomic_write(path: str | os.PathLike, what: str = "file"):
    """Yield a temporary path beside ``path``; when the block ends without error, it becomes ``path`` at once.

    Creates missing parent folders. A new file gets the permissions a freshly created file would
    (``0o666`` less the umask), so a trace a teacher saves can be read by the class; a replaced file keeps
    its own. A symbolic link is written through: its target is replaced (atomically) and the link stays. On
    an error the temporary file is removed and whatever was at ``path`` stays as it was.

    Example:
        >>> with atomic_write("run/log.json") as tmp:
        ...     tmp.write_text(json.dumps(log))
    """
    path = check_replaceable(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes 0600: private, which a shared file should not be; a file that was there keeps its mode
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def scratch_folder_beside(folder: Path) -> Path:
    """A new, empty folder next to ``folder`` (its parent made if missing), to fill and then :func:`publish_folder` onto it.

    Beside it, so that it is on the same disk and the final move is a single rename; with the
    permissions an ordinary new folder gets (``mkdtemp`` would make it private).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)  # a new path (``export ckpt models/new/tiny-flux``) is made, not refused
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.new-"))
    os.chmod(scratch, 0o777 & ~_umask())
    return scratch


def publish_folder(staged: Path, folder: Path) -> None:
    """Move the finished folder ``staged`` to ``folder`` in one step, keeping the old one until it is done.

    The caller has checked that whatever is at ``folder`` may be replaced (an earlier output of the
    same command: see :func:`check_output_folder`). On any failure the old folder is put back: the
    result is either the old outputs or the new ones, never a mix.
    """
    if not folder.exists():
        os.replace(staged, folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    os.rmdir(old)
    os.replace(folder, old)
    try:
        os.replace(staged, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_folder_name(name: str | os.PathLike, option: str = "--out") -> Path:
    """``name`` as a folder Path, refusing an empty name (which would mean the current folder) and ``/``."""
    text = os.fspath(name)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{option} is empty; name a folder to write into, e.g. {option} outputs/run")
    folder = Path(text).expanduser()
    if folder == Path(folder.anchor):
        raise ValueError(f"{option} {text} is the root of the file system; name a folder to write into, e.g. {option} outputs/run")
    return folder


def check_output_folder(folder: Path, ours, force: bool = False, fix: str = "choose a new or empty folder") -> Path:
    """Refuse (``ValueError``) an output folder that is a file or holds entries that ``ours(name)`` rejects;
    returns the folder to write into (a link's target: the link stays).

    ``force``: accept a folder that holds other things too (they are left alone: never replaced or removed);
    an entry that ``ours`` claims but that is not a regular file is refused even then. ``fix``: what the
    refusal tells the user to do.
    Used before expensive work, so that a whole generation is not made only to be refused at the end.
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise ValueError(f"{folder} is a broken symbolic link; remove it or choose another folder")
    folder = link_target(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; choose a new or empty folder to write into")
    if folder.is_dir():
        entries = sorted(folder.iterdir())
        misplaced = [p for p in entries if ours(p.name) and (p.is_symlink() or not p.is_file())]
        if misplaced:
            raise ValueError(f"{misplaced[0]} is not a file (a folder or link) where this command writes one; move it away "
                             "or choose another folder")
        foreign = [] if force else [p.name for p in entries if not ours(p.name)]
        if foreign:
            shown = ", ".join(foreign[:4]) + (", …" if len(foreign) > 4 else "")
            raise ValueError(f"{folder} holds things this command did not write ({shown}); refusing to replace them: {fix}")
    return folder


def load_weights(module: torch.nn.Module, folder: Path, name: str) -> bool:
    """Load shards written by ``train.checkpoint.save_weights`` (``NAME-0.safetensors``, …) into ``module`` (cast to its dtype); False if none."""
    paths = sorted(folder.glob(f"{name}-*.safetensors"))
    if not paths:
        return False
    state = {}
    for path in paths:
        state.update(load_file(path))
    module.load_state_dict(state)
    return True
