"""The lean per-session state must stay a drop-in for Gradio's SessionState."""

from __future__ import annotations

import inspect
from pathlib import Path

import gradio as gr
import pytest
from gradio.state_holder import SessionState, StateHolder

from agent.gradio_state import LeanSessionState, LeanStateHolder, use_lean_session_state


@pytest.fixture(scope="module")
def demo() -> gr.Blocks:
    with gr.Blocks() as blocks:
        text = gr.Textbox()
        out = gr.Textbox()
        text.submit(lambda value: value, text, out)
    return blocks


def test_lean_state_has_every_attribute_gradio_sets(demo: gr.Blocks) -> None:
    # A Gradio upgrade that adds state to SessionState.__init__ fails here, not in production.
    assert set(vars(LeanSessionState(demo))) == set(vars(SessionState(demo)))


def test_block_configs_are_built_only_for_blocks_an_event_touched(demo: gr.Blocks) -> None:
    full, lean = SessionState(demo), LeanSessionState(demo)
    assert lean.config_values == {} and len(full.config_values) >= 2
    out_id = max(full.config_values)
    lean._update_value_in_config(out_id, "hello")
    full._update_value_in_config(out_id, "hello")
    assert lean.config_values == {out_id: full.config_values[out_id]}


def test_holder_makes_lean_states_and_keeps_gradios_lru(demo: gr.Blocks) -> None:
    holder = StateHolder()
    holder.set_blocks(demo)
    use_lean_session_state(demo)
    assert demo.state_holder is holder and isinstance(holder, LeanStateHolder)
    holder.capacity = 2
    for session in ("a", "b", "c"):
        assert isinstance(holder[session], LeanSessionState)
    assert list(holder.session_data) == ["b", "c"]
    with pytest.raises(RuntimeError):
        use_lean_session_state(demo)  # too late once sessions exist


def test_the_mounted_app_uses_lean_states_and_an_async_login_check(tmp_path: Path) -> None:
    # Canaries for Gradio upgrades: both are set up by create_app from Gradio internals.
    from gradio.routes import App as GradioApp

    from agent.server import create_app
    from agent.settings import load_settings

    loaded = load_settings("balanced", ["sessions.store=memory"], environ={}, env_file=None)
    app, _ = create_app(loaded, sim_base_url="http://127.0.0.1:9/v1", state_dir=tmp_path)
    gradio_app = next(route.app for route in app.routes if isinstance(getattr(route, "app", None), GradioApp))
    assert isinstance(gradio_app.state_holder, LeanStateHolder)
    assert gradio_app.dependency_overrides, "Gradio's login_check is no longer found on /queue/join"
    for override in gradio_app.dependency_overrides.values():
        assert inspect.iscoroutinefunction(override)
