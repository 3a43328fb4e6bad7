"""`cmw serve APP`: every form of APP loads the operator's Gradio app without starting a server, an unguarded
launch() is recorded instead of run, and a bad APP is one clear line (with the app's own traceback)."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.apps import AppLoadError, LoadedApp, app_traceback, load_app
from agent.settings import ConfigError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr  # noqa: E402  (after analytics are off; paid once for the module)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd in tmp_path, sys.path restored, and the apps' modules forgotten afterwards (Gradio's stay)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None) or ""
        if name.startswith("cmw_app_") or where.startswith((str(tmp_path), str(FIXTURES))):
            del sys.modules[name]


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
        return path

    return write


def refused(spec: str) -> AppLoadError:
    with pytest.raises(ConfigError) as info:
        load_app(spec)
    assert isinstance(info.value, AppLoadError)
    assert len(info.value.problems) == 1 and "\n" not in str(info.value), str(info.value)
    return info.value


BLOCKS = """
import gradio as gr

with gr.Blocks() as demo:
    gr.Textbox()
"""


# --- every form of APP ----------------------------------------------------------------------------------------


def test_a_file_with_one_blocks(write: Callable[..., Path]) -> None:
    path = write("app.py", BLOCKS + "NAME = __name__\n")
    loaded = load_app("app.py")
    assert isinstance(loaded, LoadedApp) and isinstance(loaded.blocks, gr.Blocks)
    assert (loaded.spec, loaded.source, loaded.name) == ("app.py", str(path), "demo")
    assert loaded.launch_kwargs == {} and loaded.overridden == []
    app_module = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == str(path))
    assert app_module.NAME != "__main__" and app_module.NAME.startswith("cmw_app_app_")


def test_a_file_by_absolute_path_and_attr(write: Callable[..., Path]) -> None:
    path = write("apps/two.py", BLOCKS + "with gr.Blocks() as other:\n    gr.Number()\n")
    loaded = load_app(f"{path}:other")
    assert loaded.name == "other" and loaded.source == str(path)
    assert any(type(b).__name__ == "Number" for b in loaded.blocks.blocks.values())


def test_a_package_module_and_a_dotted_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            write: Callable[..., Path]) -> None:
    write("site/cmwtestpkg/__init__.py", "")
    write("site/cmwtestpkg/ui.py", BLOCKS + "class Holder:\n    app = demo\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    loaded = load_app("cmwtestpkg.ui:demo")
    assert (loaded.name, loaded.source) == ("demo", "cmwtestpkg.ui")
    assert load_app("cmwtestpkg.ui:Holder.app").blocks is sys.modules["cmwtestpkg.ui"].demo
    assert load_app("cmwtestpkg.ui").name == "demo"  # no attr: the module is scanned, as for a file


def test_a_module_in_the_current_directory(write: Callable[..., Path]) -> None:
    write("cmwtestcwd.py", BLOCKS)
    assert load_app("cmwtestcwd:demo").source == "cmwtestcwd"


def test_a_factory_is_called(write: Callable[..., Path]) -> None:
    write("factory.py", """
        import gradio as gr

        CALLS = []

        def create_app():
            CALLS.append(1)
            with gr.Blocks() as demo:
                gr.Textbox()
            return demo
    """)
    loaded = load_app("factory.py:create_app")
    assert loaded.name == "create_app" and isinstance(loaded.blocks, gr.Blocks)


def test_chat_interface_and_interface(write: Callable[..., Path]) -> None:
    write("chat.py", """
        import gradio as gr

        def reply(message, history):
            return message

        chat = gr.ChatInterface(reply)
    """)
    write("iface.py", """
        import gradio as gr

        iface = gr.Interface(lambda x: x, "text", "text")
    """)
    chat = load_app("chat.py")
    assert isinstance(chat.blocks, gr.ChatInterface) and chat.name == "chat"
    iface = load_app("iface.py")
    assert isinstance(iface.blocks, gr.Interface) and iface.name == "iface"


def test_blocks_rendered_inside_another_are_its_parts(write: Callable[..., Path]) -> None:
    write("tabs.py", """
        import gradio as gr

        upper = gr.Interface(str.upper, "text", "text")
        lower = gr.Interface(str.lower, "text", "text")
        demo = gr.TabbedInterface([upper, lower], ["Upper", "Lower"])
    """)
    write("nested.py", """
        import gradio as gr

        with gr.Blocks() as outer:
            inner = gr.Interface(str.upper, "text", "text")
    """)
    assert load_app("tabs.py").name == "demo"
    assert load_app("nested.py").name == "outer"


def test_siblings_import_and_the_main_guard_stays_shut(write: Callable[..., Path]) -> None:
    write("proj/cmwtest_helper.py", "LABEL = 'from the helper'\n")
    write("proj/app.py", """
        import sys

        import gradio as gr
        from cmwtest_helper import LABEL

        ARGV = list(sys.argv)
        with gr.Blocks() as demo:
            gr.Markdown(LABEL)

        if __name__ == "__main__":
            raise SystemExit("run as __main__")
    """)
    loaded = load_app("proj/app.py")
    assert loaded.name == "demo"
    app_module = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == loaded.source)
    assert app_module.LABEL == "from the helper"
    argv = app_module.ARGV
    assert argv == [loaded.source]  # the app never parses cmw's own argv


# --- an unguarded launch() ------------------------------------------------------------------------------------


def test_an_unguarded_launch_is_recorded_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    bound: list[Any] = []
    real_bind = socket.socket.bind
    monkeypatch.setattr(socket.socket, "bind", lambda self, address: bound.append(address) or real_bind(self, address))
    threads = {t.ident for t in threading.enumerate()}
    original = gr.Blocks.launch

    loaded = load_app(str(FIXTURES / "launching" / "app.py"))

    assert bound == [] and {t.ident for t in threading.enumerate()} <= threads  # no server, no thread
    assert not getattr(loaded.blocks, "is_running", False)
    assert gr.Blocks.launch is original  # restored
    assert loaded.name == "launch()" and loaded.blocks.title == "Shouting"  # the sibling import worked
    assert loaded.launch_kwargs == {"auth": ("u", "p"), "theme": "soft"}
    assert loaded.overridden == [
        f"{loaded.spec}: launch(max_threads=7) is ignored: the profile decides (server.max_threads)",
        f"{loaded.spec}: launch(server_port=7861) is ignored: the profile decides (server.port)",
    ]  # in launch()'s parameter order; share=False asks for nothing: no warning


def test_launch_wins_over_scanning_and_positional_arguments_count(write: Callable[..., Path]) -> None:
    write("launched.py", BLOCKS + """
with gr.Blocks() as other:
    gr.Number()

app, local_url, share_url = other.launch(False, False, True, ssl_keyfile_password="secret", css="p {}")
""")
    loaded = load_app("launched.py")
    assert loaded.blocks is sys.modules[next(n for n in sys.modules if n.startswith("cmw_app_launched_"))].other
    assert loaded.launch_kwargs == {"css": "p {}"}
    assert loaded.overridden == [
        "launched.py: launch(share=True) is ignored: cmw serves the app itself, without share links",
        "launched.py: launch(ssl_keyfile_password=********) is ignored: cmw serves plain HTTP; "
        "terminate TLS at a reverse proxy",
    ]
    # named explicitly, the launched Blocks keeps its arguments; another Blocks has none
    assert load_app("launched.py:other").launch_kwargs == {"css": "p {}"}
    assert load_app("launched.py:demo").launch_kwargs == {}


def test_a_factory_that_launches_is_recorded(write: Callable[..., Path]) -> None:
    write("factory_launch.py", """
        import gradio as gr

        def main():
            demo = gr.Interface(str.upper, "text", "text")
            demo.launch(server_name="0.0.0.0", auth_message="who?")
            demo.block_thread()
            return demo
    """)
    loaded = load_app("factory_launch.py:main")
    assert loaded.launch_kwargs == {"auth_message": "who?"}
    assert loaded.overridden == [
        "factory_launch.py: launch(server_name='0.0.0.0') is ignored: the profile decides (server.host)"
    ]
    assert gr.Blocks.launch.__qualname__ == "Blocks.launch"


def test_launch_is_restored_when_the_import_fails(write: Callable[..., Path]) -> None:
    write("boom.py", BLOCKS + "demo.launch()\nraise RuntimeError('after launch')\n")
    original = gr.Blocks.launch, gr.Blocks.block_thread
    refused("boom.py")
    assert (gr.Blocks.launch, gr.Blocks.block_thread) == original


# --- a bad APP: one line --------------------------------------------------------------------------------------


def test_several_apps_are_named(write: Callable[..., Path]) -> None:
    write("app.py", BLOCKS + "with gr.Blocks() as other:\n    gr.Number()\nsame = demo\n")
    assert str(refused("app.py")) == "app.py defines several Gradio apps (demo, other): name one, e.g. app.py:demo"


def test_no_blocks(write: Callable[..., Path]) -> None:
    write("app.py", """
        import gradio as gr

        def build():
            return gr.Blocks()
    """)
    assert str(refused("app.py")).startswith("app.py defines no gradio Blocks at module level and calls no launch()")


def test_no_such_file_or_module() -> None:
    assert str(refused("nope.py")) == "no such file nope.py"
    assert str(refused("sub/nope.py:demo")) == "no such file sub/nope.py"
    assert str(refused("cmwtest_nosuchpkg.ui:demo")).startswith("no module named 'cmwtest_nosuchpkg' (for ")


def test_bad_specs(tmp_path: Path) -> None:
    for spec in ("", ":demo", "app.py:", "not a module"):
        assert "expected path/to/app.py, path/to/app.py:attr or package.module:attr" in str(refused(spec))
    (tmp_path / "adir.py").mkdir()
    assert str(refused("adir.py")) == "adir.py is not a Python file"


def test_the_apps_import_error_is_one_line_with_its_own_traceback(write: Callable[..., Path]) -> None:
    path = write("app.py", """
        import gradio as gr

        with gr.Blocks() as demo:
            gr.Textbox()

        RATIO = 1
        SCALE = RATIO / 0
    """)
    error = refused("app.py")
    assert str(error) == "app.py failed while importing: ZeroDivisionError: division by zero (app.py, line 7)"
    assert f'File "{path}", line 7' in error.app_traceback
    assert error.app_traceback.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "importlib" not in error.app_traceback and "agent/apps" not in error.app_traceback


def test_a_failing_sibling_shows_both_files(write: Callable[..., Path]) -> None:
    helper = write("cmwtest_failing_helper.py", "def build():\n    return {}['missing']\n")
    app = write("app.py", "from cmwtest_failing_helper import build\n\nbuild()\n")
    error = refused("app.py")
    assert str(error) == ("app.py failed while importing: KeyError: 'missing' (cmwtest_failing_helper.py, line 2)")
    assert str(app) in error.app_traceback and str(helper) in error.app_traceback
    assert error.app_traceback.index(str(app)) < error.app_traceback.index(str(helper))


def test_an_error_inside_gradio_points_at_the_apps_line(write: Callable[..., Path]) -> None:
    write("app.py", "import gradio as gr\n\ndemo = gr.Interface(str.upper, 'no-such-component', 'text')\n")
    error = refused("app.py")
    assert str(error).startswith("app.py failed while importing: ") and str(error).endswith("(app.py, line 3)")
    assert "site-packages" not in error.app_traceback and "app.py" in error.app_traceback


def test_syntax_errors_missing_dependencies_and_exits(write: Callable[..., Path]) -> None:
    write("syntax.py", "import gradio as gr\n\ndemo = gr.Blocks(\n")
    error = refused("syntax.py")
    assert str(error).startswith("syntax.py failed while importing: SyntaxError: ")
    assert "syntax.py" in error.app_traceback and "importlib" not in error.app_traceback
    write("dep.py", "import cmwtest_not_installed\n")
    assert str(refused("dep.py")) == ("dep.py failed while importing: ModuleNotFoundError: No module named "
                                      "'cmwtest_not_installed' (dep.py, line 1)")
    write("exits.py", "raise SystemExit(2)\n")
    assert str(refused("exits.py")) == "exits.py exited while importing (SystemExit: 2)"


def test_missing_attribute_and_wrong_types(write: Callable[..., Path]) -> None:
    write("app.py", BLOCKS + """
TITLE = "hello"

def create_app():
    raise ValueError("boom")

def needs(x):
    return x

def number():
    return 42
""")
    assert str(refused("app.py:dem")) == "app.py has no attribute 'dem' (did you mean demo?)"
    assert str(refused("app.py:TITLE.upperx")) == "app.py:TITLE has no attribute 'upperx' (did you mean upper?)"
    assert str(refused("app.py:TITLE")) == "app.py:TITLE is a str, not a gradio Blocks"
    assert str(refused("app.py:number")) == "app.py:number() returned a int, not a gradio Blocks"
    assert str(refused("app.py:needs")) == "app.py:needs takes arguments; a factory must be callable with none"
    error = refused("app.py:create_app")
    assert str(error) == "app.py:create_app() failed: ValueError: boom (app.py, line 9)"
    assert "line 9, in create_app" in error.app_traceback


def test_app_traceback_filters_chained_exceptions(write: Callable[..., Path]) -> None:
    path = write("chained.py", """
        def inner():
            raise KeyError("k")

        def outer():
            try:
                inner()
            except KeyError as exc:
                raise RuntimeError("wrapped") from exc
    """)
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    try:
        namespace["outer"]()
    except RuntimeError as exc:
        text = app_traceback(exc)
    assert "KeyError: 'k'" in text and "RuntimeError: wrapped" in text
    assert text.count(f'File "{path}"') == 3  # inner, and outer twice (the call, the raise)
