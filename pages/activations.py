"""Token activations: which features fire on each token of a prompt.

On a first visit to the demo (no prompt yet), example prompts from the demo corpus's genres,
one click each, and links to the feature of the seed's story (explorer.examples)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from explorer.activations import MAX_PROMPT_TOKENS
from explorer.attribution import attribute
from explorer.examples import DEMO_PROMPTS, STORY, story_queries
from explorer.links import MAX_PROMPT_CHARS
from ui import cache, charts, links
from ui.errors import shown_as_message
from ui.features import feature_md, feature_name, label, max_act, md
from ui.router import PAGES, run_page
from ui.workspace import current_workspace, ws_key

PAGE = "activations"
N_HEATMAP = 20
N_ATTRIBUTED = 10  # features listed per direction


def activations_page() -> None:
    st.title("Token activations")
    ws = current_workspace()
    if ws is None:
        return
    prompt_form(ws)
    run = st.session_state.get("act_run")
    if run is None:
        st.info("Type a prompt and press **Analyse** to see which features fire on each token.")
        if is_demo(ws):
            first_visit(ws)
        return
    acts = analyse(ws, run)
    if acts is None:
        return
    ranked = acts.top_features(n=500)
    if not ranked:
        st.info("No feature fires on this prompt.")
        return
    feature = feature_picker(ws, ranked)
    links.write_link(PAGE, {"prompt": run[0], **({"chat": "1"} if run[1] else {}), "feature": str(feature)})
    highlighted_tokens(ws, acts, feature, run[0])
    token_panel(ws, acts, feature)
    attribution_panel(ws, acts, *run)
    chart_tabs(ws, acts, [f for f, _ in ranked[:N_HEATMAP]])


def prompt_form(ws) -> None:
    state, fresh = links.link(PAGE, ws)
    if fresh and state.prompt:
        st.session_state.update(act_prompt=state.prompt, act_chat=state.chat, act_run=(state.prompt, state.chat))
        if state.feature is not None:
            st.session_state["act_want_feature"] = state.feature
    chat_ok = bool(getattr(ws.lm.tokenizer, "chat_template", None))
    with st.form("prompt_form"):
        text = st.text_area("Prompt", key="act_prompt", persist_state="session", height=110, max_chars=MAX_PROMPT_CHARS,
                            placeholder="Type or paste text; tokens past the limit are cut.")
        chat = st.checkbox("Wrap in the chat template", key="act_chat", persist_state="session", disabled=not chat_ok,
                           help="For instruct models: analyse the prompt as a user message.")
        if st.form_submit_button("Analyse", type="primary"):
            st.session_state["act_run"] = (text, chat)


def is_demo(ws) -> bool:
    """The demo SAE and index are loaded: the example prompts and the story are about them."""
    from explorer.workspace import DEMO_INDEX, DEMO_SAE

    return (ws.index is not None and ws.sae_source != "random" and Path(ws.sae_source).resolve() == DEMO_SAE.resolve()
            and Path(ws.index.path).resolve() == DEMO_INDEX.resolve())


def use_example(text: str) -> None:
    st.session_state.update(act_prompt=text, act_chat=False, act_run=(text, False))


def first_visit(ws) -> None:
    """Example prompts (one click analyses one) and the seed's story: a feature that turns a
    correct program's output into an error message."""
    st.markdown("**New here? Try an example from the demo corpus:**")
    with st.container(horizontal=True, key="act_examples"):
        for ex in DEMO_PROMPTS:
            st.button(ex.title, on_click=use_example, args=(ex.text,), help=f"{ex.genre}: {ex.source}")
    card, steer = story_queries()
    st.markdown(f"**The story:** feature #{STORY.feature} {md(ws.index.label(STORY.feature))} {STORY.what}.")
    with st.container(horizontal=True, key="act_story"):
        st.page_link(PAGES["feature"], label=f"Open the card of #{STORY.feature}", icon=":material/style:",
                     query_params=card)
        st.page_link(PAGES["steering"], label=f"Clamp #{STORY.feature} on a correct program", icon=":material/tune:",
                     query_params=steer)


def analyse(ws, run: tuple[str, bool]):
    """The prompt's activations, or None after showing why there are none."""
    with shown_as_message("analyse the prompt") as outcome:
        acts = cache.activations(ws, *run)
    if outcome.failed:
        return None
    if acts.truncated_from:
        st.warning(f"The prompt has {acts.truncated_from:,} tokens; only the first {MAX_PROMPT_TOKENS} were analysed.")
    return acts


def feature_picker(ws, ranked: list[tuple[int, float]]) -> int:
    """The feature to highlight, strongest first; a deep link's feature when it fires."""
    options = [f for f, _ in ranked]
    want = st.session_state.pop("act_want_feature", None)
    if want in options or st.session_state.get("act_feature") not in options:
        st.session_state["act_feature"] = want if want in options else options[0]
    return st.selectbox("Highlight feature (strongest first)", options, key="act_feature", persist_state="session",
                        format_func=lambda f: f"{feature_name(ws, f)}  (max {dict(ranked)[f]:.3g})")


def highlighted_tokens(ws, acts, feature: int, prompt: str) -> None:
    """The prompt's tokens coloured by the feature, then links to its card and to steer it."""
    values = acts.feature_values(feature)
    vmax = max_act(ws, feature) or max(values)
    with st.container(key="act_tokens"):
        charts.tokens_html(acts.tokens, values, vmax)
    with st.container(horizontal=True):
        st.page_link(PAGES["feature"], label=f"Open the card of #{feature}", icon=":material/style:",
                     query_params={"feature": str(feature)}, disabled=ws.index is None)
        relative = max_act(ws, feature) is not None
        steer = f"{feature}:clamp:4x" if relative else f"{feature}:clamp:{4 * max(values):.3g}"
        st.page_link(PAGES["steering"], label=f"Steer #{feature}", icon=":material/tune:",
                     query_params={"steer": steer, "prompt": prompt})


def token_panel(ws, acts, feature: int) -> None:
    """Pick a token; list the features it activates, with links to their cards."""
    trace = acts.feature_values(feature)
    peak = max(range(len(trace)), key=trace.__getitem__)  # start where the highlighted feature peaks
    pos = st.selectbox("Token", range(len(acts.tokens)), index=peak, key="act_token", persist_state="session",
                       format_func=lambda i: f"{i}: {acts.tokens[i]}")
    feats, vals = acts.features[pos], acts.values[pos]
    err = acts.error_norm[pos] / acts.input_norm[pos] if acts.input_norm[pos] else 0.0
    st.caption(f"Token {pos} activates {len(feats)} kept features; reconstruction error ‖x−x̂‖/‖x‖ = {err:.3f}")
    table = pd.DataFrame({"feature": feats, "activation": vals, "label": [label(ws, f) for f in feats]})
    st.dataframe(table, hide_index=True, width="stretch")
    links.feature_links(ws, list(zip(feats[:8], vals[:8])), key="token_feature_links")


def attribution_panel(ws, acts, prompt: str, chat: bool) -> None:
    """Which features made a token: built only while open, and run only on request
    (a backward pass costs about two forward passes)."""
    box = st.expander("Which features made the next token?", key="attr_open", on_change="rerun",
                      icon=":material/account_tree:")
    if not box.open:
        return
    first = 1 if acts.token_ids[0] == ws.lm.tokenizer.bos_token_id else 0
    last = len(acts.tokens) - 1
    if st.session_state.get("attr_pos", first) not in range(first, last + 1):  # a shorter prompt since
        del st.session_state["attr_pos"]
    with box, st.form("attr_form", border=False):
        pos = st.selectbox("Explain the token predicted after", range(first, last + 1), index=last - first,
                           key="attr_pos", format_func=lambda i: f"{i}: {acts.tokens[i]}")
        target = st.text_input("Target token", key="attr_target", placeholder="the actual next token",
                               help="One token; a leading space counts (type ␣ or a space), or an id as id:123.")
        versus = st.text_input("Versus (optional)", key="attr_versus", placeholder="e.g. ␣Paris",
                               help="Explain logit(target) − logit(versus): why the target rather than this token.")
        submitted = st.form_submit_button("Attribute", icon=":material/account_tree:")
    request = (ws_key(ws), prompt, chat, pos, target, versus)
    if submitted:
        with box, shown_as_message("attribute the token") as outcome:
            result = attribute(ws.lm, ws.sae, prompt, pos, target or None, versus or None, chat=chat,
                               top=N_ATTRIBUTED)
        if outcome.failed:
            return
        st.session_state["attr_result"] = (request, result)
    saved = st.session_state.get("attr_result")
    if saved is not None and saved[0] == request:
        with box:
            attribution_lists(ws, saved[1], prompt, chat)


def attribution_lists(ws, result, prompt: str, chat: bool) -> None:
    versus = f" − logit of {md(result.versus_token)}" if result.versus is not None else ""
    st.caption(f"Logit of {md(result.target_token)}{versus} after token {result.position} = {result.metric:.3f}. "
               "Each feature's score is its activation × the gradient of that logit by it (the SAE spliced in, its "
               f"error kept). All features: {result.features_total:+.3f}; SAE error term: {result.error_share:+.3f}; "
               f"decoder bias: {result.bias_share:+.3f}.")
    # Steering from the analysed token shows what the feature does to the very next token.
    query = {"prompt": prompt, "chat": "1"} if chat else {"prompt": result.prompt_prefix}
    lists = (("up", "Pushes towards", result.positive), ("down", "Pushes against", result.negative))
    for column, (name, title, scores) in zip(st.columns(2), lists):
        column.markdown(f"**{title} {md(result.target_token)}**")
        for i, s in enumerate(scores):
            with column.container(horizontal=True, key=f"attr_{name}_{i}"):
                st.page_link(PAGES["feature"], query_params={"feature": str(s.feature)}, disabled=ws.index is None,
                             label=f"{s.score:+.3f} {feature_md(ws, s.feature)} on {md(result.tokens[s.position])}")
                value = "3x" if max_act(ws, s.feature) is not None else f"{3 * s.activation:.3g}"
                st.page_link(PAGES["steering"], label="steer", icon=":material/tune:",
                             query_params={**query, "steer": f"{s.feature}:clamp:{value}"})


def chart_tabs(ws, acts, top: list[int]) -> None:
    heat, error = st.tabs(["Heatmap: tokens × top features", "Reconstruction error per token"])
    heat.plotly_chart(charts.heatmap(ws, acts, top), key="act_heatmap")
    error.plotly_chart(charts.error_chart(acts), key="act_error")


run_page(activations_page)
