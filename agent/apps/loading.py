"""Loading the operator's Gradio app for ``cmw serve APP``: ``path/to/app.py``, ``path/to/app.py:attr`` or
``package.module:attr`` (uvicorn's convention; ``attr`` may be dotted and may name a zero-argument factory).

Apps written for ``python app.py`` often call ``demo.launch(...)`` unguarded at import time. While the app is
imported ``Blocks.launch`` is replaced by a recorder, so no server starts; what only ``launch()`` can carry
(``auth``, ``theme``, ``css`` ...) is kept for cmw to pass on, and what the profile decides instead (host,
port, threads ...) becomes a one-line warning. A bad APP is a :class:`~agent.settings.ConfigError` whose
message is one line (exit 2); when the app's own code raised, :func:`app_traceback` holds its frames only.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agent.app.gradio_compat import intercepted_launch
from agent.settings.errors import ConfigError, Problem, short_value
from agent.settings.masking import MASK

if TYPE_CHECKING:
    from gradio import Blocks

USAGE = "expected path/to/app.py, path/to/app.py:attr or package.module:attr"

# launch() arguments cmw passes on (to gr.mount_gradio_app): they describe the app, not the server.
KEPT = ("auth", "auth_message", "auth_dependency", "favicon_path", "allowed_paths", "blocked_paths", "show_error",
        "footer_links", "pwa", "i18n", "mcp_server", "theme", "css", "css_paths", "js", "head", "head_paths")

# launch() arguments the profile (or cmw itself) decides instead → why; anything else unknown is ignored too.
_PROFILE = "the profile decides"
_SERVER = "cmw runs the server"
OVERRIDDEN = {
    "server_name": f"{_PROFILE} (server.host)",
    "server_port": f"{_PROFILE} (server.port)",
    "max_threads": f"{_PROFILE} (server.max_threads)",
    "root_path": f"{_PROFILE} (server.root_path)",
    "num_workers": f"{_PROFILE} (server.workers)",
    "max_file_size": f"{_PROFILE} (sessions.max_upload_bytes)",
    "state_session_capacity": f"{_PROFILE} (sessions.max_sessions)",
    "share": "cmw serves the app itself, without share links",
    "share_server_address": "cmw serves the app itself, without share links",
    "share_server_protocol": "cmw serves the app itself, without share links",
    "share_server_tls_certificate": "cmw serves the app itself, without share links",
    "ssl_keyfile": "cmw serves plain HTTP; terminate TLS at a reverse proxy",
    "ssl_certfile": "cmw serves plain HTTP; terminate TLS at a reverse proxy",
    "ssl_keyfile_password": "cmw serves plain HTTP; terminate TLS at a reverse proxy",
    "ssl_verify": "cmw serves plain HTTP; terminate TLS at a reverse proxy",
    "ssr_mode": "cmw serves without server-side rendering",
    "node_server_name": "cmw serves without server-side rendering",
    "node_port": "cmw serves without server-side rendering",
    "enable_monitoring": "cmw keeps it off (its admin API and /metrics report the same, behind a token)",
    "run_history": "cmw keeps it off",
    "inbrowser": _SERVER,
    "inline": _SERVER,
    "height": _SERVER,
    "width": _SERVER,
    "debug": _SERVER,
    "quiet": _SERVER,
    "prevent_thread_lock": _SERVER,
    "strict_cors": _SERVER,
    "app_kwargs": _SERVER,
}
_SECRET = {"ssl_keyfile_password"}


class AppLoadError(ConfigError):
    """APP could not be loaded; ``app_traceback`` holds the app's own frames when its code raised, else ''."""

    def __init__(self, message: str, app_traceback: str = ""):
        super().__init__([Problem(message)])
        self.app_traceback = app_traceback


@dataclass
class LoadedApp:
    """The operator's app, ready to mount, with what its own ``launch()`` call asked for."""

    blocks: Blocks
    spec: str  # APP as given
    source: str  # the resolved file path, or the module name
    name: str  # the attribute (dotted) that named it, its global name, or "launch()"
    launch_kwargs: dict[str, Any] = field(default_factory=dict)  # KEPT arguments of its launch() call
    overridden: list[str] = field(default_factory=list)  # one warning per launch() argument cmw ignores


def load_app(spec: str) -> LoadedApp:
    """The Gradio app APP names, imported without starting a server; an AppLoadError (one line) otherwise."""
    import gradio as gr

    where, attr = _split(spec)
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    if is_file:
        path = Path(where).expanduser().resolve()
        if not path.exists():
            raise AppLoadError(f"no such file {where}")
        if not path.is_file():
            raise AppLoadError(f"{where} is not a Python file")
        roots, source = [path.parent], str(path)
    else:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", where):
            raise AppLoadError(f"{spec!r}: {USAGE}")
        roots, source = _module_roots(where), where
    if attr is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
        raise AppLoadError(f"{spec!r}: {attr!r} is not an attribute name; {USAGE}")

    with intercepted_launch() as launched, _argv(source):
        try:
            module = _exec_file(path) if is_file else _import_module(where)
        except ModuleNotFoundError as exc:
            if not is_file and exc.name and (where == exc.name or where.startswith(exc.name + ".")):
                raise AppLoadError(f"no module named {exc.name!r} (for {spec}; looked in the current directory "
                                   "and the installed packages)") from None
            raise _app_failed(f"{where} failed while importing", exc, roots) from exc
        except SystemExit as exc:
            raise AppLoadError(f"{where} exited while importing (SystemExit: {exc.code})",
                               app_traceback(exc, roots)) from exc
        except Exception as exc:  # the app's own code raised: one line here, its frames in app_traceback
            raise _app_failed(f"{where} failed while importing", exc, roots) from exc

        if attr is not None:
            name, blocks = attr, _resolve(module, where, attr, gr.Blocks, roots)
        elif launched:
            name, blocks = "launch()", launched[0][0]
        else:
            name, blocks = _single_blocks(module, where, gr.Blocks)
    kwargs = next((kw for b, kw in launched if b is blocks), {})
    kept, overridden = _sort_launch_kwargs(where, kwargs, gr.Blocks)
    return LoadedApp(blocks=blocks, spec=spec, source=source, name=name, launch_kwargs=kept, overridden=overridden)


def app_traceback(exc: BaseException, roots: Iterable[Path] = ()) -> str:
    """``exc``'s traceback with only the app's frames: not cmw's, importlib's, the stdlib's or installed
    libraries' (Gradio's). A frame inside a library directory is kept when it is under one of ``roots``
    (an app installed into site-packages); chained exceptions are filtered the same way."""
    roots = [Path(r).resolve() for r in roots]
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    seen: set[int] = set()
    pending = [te]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        kept = [f for f in item.stack if _is_app_frame(f.filename, roots)]
        item.stack = traceback.StackSummary.from_list(kept)
        pending.extend(x for x in (item.__cause__, item.__context__) if x is not None)
        pending.extend(getattr(item, "exceptions", None) or [])
    return "".join(te.format())


def _split(spec: str) -> tuple[str, str | None]:
    """(module or file, attr or None). A colon followed by a path is a Windows drive, not an attr."""
    where, colon, attr = spec.strip().rpartition(":")
    if not colon or "/" in attr or "\\" in attr or attr.endswith(".py"):
        where, attr = spec.strip(), ""
        if not where:
            raise AppLoadError(f"{spec!r}: {USAGE}")
        return where, None
    if not where or not attr:
        raise AppLoadError(f"{spec!r}: {USAGE}")
    return where, attr


def _module_roots(name: str) -> list[Path]:
    """Where the top-level package of ``name`` lives (its frames are the app's), found without importing it."""
    _cwd_on_path()
    try:
        found = importlib.util.find_spec(name.partition(".")[0])
    except (ImportError, ValueError):
        found = None
    if found is None:
        return []
    if found.submodule_search_locations:
        return [Path(p) for p in found.submodule_search_locations]
    return [Path(found.origin).parent] if found.origin else []


def _cwd_on_path() -> None:
    """uvicorn's convention: ``package.module`` is looked for in the current directory first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import_module(name: str) -> ModuleType:
    _cwd_on_path()
    return importlib.import_module(name)


def _exec_file(path: Path) -> ModuleType:
    """Run the file as a module named after its path (never ``__main__``, so a ``__main__`` guard stays shut),
    with its directory first on ``sys.path`` — kept there, as handlers may import siblings later."""
    folder = str(path.parent)
    if sys.path[:1] != [folder]:
        sys.path.insert(0, folder)
    stem = re.sub(r"\W", "_", path.stem)
    name = f"cmw_app_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert module_spec is not None  # a SourceFileLoader was given
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@contextlib.contextmanager
def _argv(source: str) -> Iterator[None]:
    """The app sees an argv of its own: one that parses arguments at import must not read cmw's."""
    saved = sys.argv
    sys.argv = [source]
    try:
        yield
    finally:
        sys.argv = saved


def _single_blocks(module: ModuleType, where: str, blocks_cls: type) -> tuple[str, Any]:
    """The one top-level Blocks of the module; Blocks rendered inside another (a TabbedInterface's tabs, an
    Interface inside ``with gr.Blocks()``) are parts of it, not candidates."""
    found: dict[int, tuple[str, Any]] = {}
    for name, value in vars(module).items():
        if isinstance(value, blocks_cls) and id(value) not in found:
            found[id(value)] = (name, value)
    candidates = list(found.values())
    apps = [(n, b) for n, b in candidates if not any(_inside(b, other) for _, other in candidates if other is not b)]
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise AppLoadError(f"{where} defines no gradio Blocks at module level and calls no launch(): name the app "
                           f"or a factory that returns one, e.g. {where}:demo or {where}:create_app")
    names = ", ".join(n for n, _ in apps)
    raise AppLoadError(f"{where} defines several Gradio apps ({names}): name one, e.g. {where}:{apps[0][0]}")


def _inside(inner: Any, outer: Any) -> bool:
    parent = getattr(inner, "parent", None)
    while parent is not None:
        if parent is outer:
            return True
        parent = getattr(parent, "parent", None)
    ids = set(getattr(inner, "blocks", {}) or {})
    return bool(ids) and ids < set(getattr(outer, "blocks", {}) or {})


def _resolve(module: ModuleType, where: str, attr: str, blocks_cls: type, roots: list[Path]) -> Any:
    """``module.attr`` (dotted), called when it is a factory rather than a Blocks."""
    target: Any = module
    done: list[str] = []
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("__")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            walked = f"{where}:{'.'.join(done)}" if done else where
            raise AppLoadError(f"{walked} has no attribute {part!r}{hint}")
        target = getattr(target, part)
        done.append(part)
    if isinstance(target, blocks_cls):
        return target
    if not callable(target):
        raise AppLoadError(f"{where}:{attr} is a {type(target).__name__}, not a gradio Blocks")
    try:
        inspect.signature(target).bind()
    except TypeError:
        raise AppLoadError(f"{where}:{attr} takes arguments; a factory must be callable with none") from None
    except ValueError:
        pass  # no signature to check (a builtin): just call it
    try:
        made = target()
    except SystemExit as exc:
        raise AppLoadError(f"{where}:{attr}() exited (SystemExit: {exc.code})", app_traceback(exc, roots)) from exc
    except Exception as exc:
        raise _app_failed(f"{where}:{attr}() failed", exc, roots) from exc
    if not isinstance(made, blocks_cls):
        raise AppLoadError(f"{where}:{attr}() returned a {type(made).__name__}, not a gradio Blocks")
    return made


def _app_failed(what: str, exc: BaseException, roots: list[Path]) -> AppLoadError:
    """``what: Type: message (file, line N)`` on one line, the app's frames in ``app_traceback``."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    if isinstance(exc, SyntaxError) and exc.filename:
        text = " ".join(str(exc.msg).split())
        at = f" ({_shown(exc.filename)}, line {exc.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_app_frame(f.filename, roots)]
        at = f" ({_shown(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return AppLoadError(f"{what}: {detail}{at}", app_traceback(exc, roots))


def _shown(filename: str) -> str:
    """A frame's file relative to the current directory when under it, as a person would type it."""
    with contextlib.suppress(ValueError, OSError):
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    return filename


@cache
def _library_dirs() -> tuple[Path, ...]:
    """Directories whose frames are never the app's: the stdlib, installed packages, cmw's own packages."""
    paths = sysconfig.get_paths()
    dirs = {Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    here = Path(__file__).resolve()
    dirs.add(here.parents[1])  # agent/
    dirs.add(here.parents[2] / "cmw_cli")
    return tuple(d.resolve() for d in dirs)


def _is_app_frame(filename: str, roots: list[Path]) -> bool:
    if not filename or filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    path = Path(filename).resolve()
    for lib in _library_dirs():
        if path.is_relative_to(lib) and not any(path.is_relative_to(r) and r.is_relative_to(lib) for r in roots):
            return False
    return True


def _sort_launch_kwargs(where: str, kwargs: dict[str, Any], blocks_cls: type) -> tuple[dict[str, Any], list[str]]:
    """(arguments cmw passes on, one warning per argument it ignores). An ignored argument that asks for nothing
    (launch()'s own default, or False for an off-by-default None) is not worth a warning, unless the profile has
    a key for it."""
    params = inspect.signature(blocks_cls.launch).parameters
    kept: dict[str, Any] = {}
    overridden: list[str] = []
    for name, value in kwargs.items():
        if name in KEPT and name in params:
            kept[name] = value
            continue
        reason = OVERRIDDEN.get(name, "cmw does not pass it on")
        default = params[name].default if name in params else inspect.Parameter.empty
        asks_nothing = _same(value, default) or (default is None and value is False)  # share=False, inline=False
        if asks_nothing and not (reason.startswith(_PROFILE) and value is not None):
            continue
        shown = MASK if name in _SECRET else short_value(value)
        overridden.append(f"{where}: launch({name}={shown}) is ignored: {reason}")
    return kept, overridden


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False
