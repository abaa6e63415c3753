"""Steering: clamp, scale, add to or ablate features and compare completions."""

import functools

import streamlit as st

from explorer import export
from explorer.links import LIMITS, VALUE_RANGES, LinkState, to_query
from explorer.steering import (
    MODES,
    Condition,
    GenerationSettings,
    Intervention,
    SteeringError,
    StopCondition,
    check_condition,
    generate_rows,
    parse_stop,
)
from ui import completions, links, presets
from ui.errors import shown_as_message
from ui.features import feature_md, feature_name, label, max_act, md
from ui.router import run_page
from ui.workspace import ws_key

PAGE = "steering"
DEFAULT_PROMPT = "My favourite thing to do on a sunny day is"
MAX_HISTORY = 50  # runs kept per session
# The condition picker's choices -> (Condition kind, what its one text box asks for)
CONDITIONS = {"always": (None, ""), "where feature >": ("feature_above", "Feature>threshold"),
              "generated tokens": ("generated_only", ""), "after text matches": ("after_pattern", "Pattern (regex)")}


def steering_page() -> None:
    opened = links.open_page(PAGE, "Steering")
    if opened is None:
        return
    ws, state, fresh = opened
    if fresh and (state.steer or state.prompt):
        load_link(ws, state)
    if ws.index is None:
        st.caption("No index is loaded, so values are absolute activations (no '× max').")
    ivs = editor(ws)
    stop = stop_input(ws)
    prompt, settings = settings_form()
    presets.bar(ws, ivs, stop, settings, on_load=functools.partial(load_preset, ws))
    links.write_link(PAGE, to_query(LinkState(prompt=prompt, steer=tuple(ivs), max_new_tokens=settings.max_new_tokens,
                                               temperature=settings.temperature, top_p=settings.top_p,
                                               seed=settings.seed, chat=settings.chat, stop=stop)))
    results(ws, prompt, ivs, settings, stop)
    sweep(ws, prompt, ivs, settings)


# A click on Generate or Run sweep reruns only its own fragment: the browser redraws those
# elements, not the editor's widgets above nor the other fragment's. The browser usually
# shares this machine's cores with the model; measured with eight tabs generating at once:
# redrawing the editor too cost each tab about 0.4 s of CPU per click, redrawing the sweep's
# widgets with the results about 0.1 s.
@st.fragment
def results(ws, prompt: str, ivs, settings, stop) -> None:
    """What Generate changes: the completions and the session's runs."""
    compare(ws, prompt, ivs, settings, stop)
    history_panel(ws)


def load_link(ws, state: LinkState) -> None:
    """A new deep link replaces the features to steer and the settings."""
    st.session_state["steer_items"] = []
    for iv in state.steer:
        if iv.relative and max_act(ws, iv.feature) is None:
            st.error(f"Problem in the link: '{iv.describe()}' needs the feature's max activation, which is unknown "
                     "(no index is loaded, or the feature never fired in it). "
                     f"Using the absolute value {iv.value:g} instead: adjust it below.")
            iv = Intervention(iv.feature, iv.mode, iv.value, relative=False, condition=iv.condition)
        add_item(iv.feature, iv.mode, iv.value, iv.relative, iv.condition)
    st.session_state.update(steer_prompt=state.prompt or DEFAULT_PROMPT, steer_new=state.max_new_tokens,
                            steer_temp=state.temperature, steer_top_p=state.top_p, steer_seed=state.seed,
                            steer_chat=state.chat, steer_stop=state.stop.spec() if state.stop else "")


def load_preset(ws, preset) -> None:
    """A preset replaces the features to steer and the stop; its settings, when it has any, the settings."""
    s = st.session_state
    current = {"max_new_tokens": s.get("steer_new"), "temperature": s.get("steer_temp"), "top_p": s.get("steer_top_p"),
               "seed": s.get("steer_seed")}
    values = {k: v for k, v in {**current, **preset.settings}.items() if v is not None}
    load_link(ws, LinkState(prompt=s.get("steer_prompt"), steer=preset.interventions, stop=preset.stop,
                            chat=bool(s.get("steer_chat")), **values))


def editor(ws) -> list[Intervention]:
    st.subheader("Features to steer")
    items = st.session_state.setdefault("steer_items", [])
    ivs = [iv for iv in (item_row(ws, item) for item in items) if iv is not None]
    if not items:
        st.info("No feature yet: add one below, or open this page from a token or a feature card.")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        new = st.number_input("Feature id", 0, ws.sae.cfg.d_sae - 1, key="steer_new_feature", persist_state="session",
                              step=1, width=180)
        known = max_act(ws, new) is not None
        st.button("Add feature", on_click=add_item, args=(new, "clamp", 4.0 if known else 10.0, known), icon=":material/add:")
        if ws.index is not None:
            query = st.text_input("…or search labels", key="steer_search", width=260)
            for f in ws.index.search(query.strip(), by="label", limit=6) if query.strip() else []:
                st.button(f"Add {feature_md(ws, f)}", key=f"steer_hit_{f}", on_click=add_item,
                          args=(f, "clamp", 4.0, True))
    return ivs


def item_row(ws, item) -> Intervention | None:
    """One feature's editor row; None (with the reason shown) while its condition is invalid."""
    uid, feature = item["uid"], item["feature"]
    known = max_act(ws, feature)
    with st.container(horizontal=True, vertical_alignment="bottom", key=f"steer_row_{uid}"):
        st.markdown(f"**{feature_md(ws, feature)}**", width=220)
        mode = st.selectbox("Mode", MODES, key=f"mode_{uid}", persist_state="session", width=120)
        relative = False
        if mode == "ablate":
            value = 0.0
            st.caption("sets the feature to 0 at every token")
        elif mode == "scale":
            value = slider("Factor", "scale", f"val_{uid}_scale", 2.0, 0.1)
        else:
            relative = known is not None and st.toggle("× max", key=f"rel_{uid}", persist_state="session",
                                                       help="Value in multiples of the feature's max activation")
            if relative:
                value = slider(f"× max activation ({known:.3g})", "relative", f"val_{uid}_rel", 4.0, 0.25)
            else:
                st.session_state.setdefault(f"val_{uid}_abs", 10.0)
                low, high = VALUE_RANGES["absolute"]
                value = st.number_input("Value (activation units)", low, high, key=f"val_{uid}_abs",
                                        persist_state="session", step=1.0, width=200)
        condition, problem = condition_picker(ws, uid)
        st.button("Remove", key=f"rm_{uid}", on_click=remove_item, args=(uid,), icon=":material/delete:")
    if problem:
        st.error(f"{feature_md(ws, feature)} is left out until its condition is fixed: {md(problem)}")
        return None
    return Intervention(feature, mode, float(value), relative, condition)


def condition_picker(ws, uid: int) -> tuple[Condition | None, str | None]:
    """Where the edit applies: a choice of CONDITIONS plus, for two of them, one text box."""
    choice = st.selectbox("Apply", list(CONDITIONS), key=f"cond_{uid}", persist_state="session", width=170)
    kind, asks = CONDITIONS[choice]
    text = ""
    if asks:
        text = st.text_input(asks, key=f"cond_{uid}_{kind}", persist_state="session", width=170,
                             placeholder="45>0.5" if kind == "feature_above" else r"\.")
    if kind is None:
        return None, None
    try:
        if kind == "feature_above":
            watched = parse_stop(text)  # the same FEATURE>THRESHOLD
            cond = Condition(kind, watched.feature, watched.threshold)
        else:
            cond = Condition(kind, pattern=text)
        check_condition(cond, ws.sae.cfg.d_sae)
    except SteeringError as err:
        return None, str(err)
    return cond, None


def stop_input(ws) -> StopCondition | None:
    text = st.text_input("Stop the steered completion when (feature>threshold)", key="steer_stop",
                         persist_state="session", placeholder="45>0.5 (empty: never)", width=320).strip()
    if not text:
        return None
    try:
        stop = parse_stop(text)
        check_condition(stop, ws.sae.cfg.d_sae)
    except SteeringError as err:
        st.error(f"The stop condition is not used: {md(str(err))}")
        return None
    return stop


def slider(title: str, kind: str, key: str, default: float, step: float, **kw):
    st.session_state.setdefault(key, default)  # widget state is dropped while a widget is hidden
    low, high = VALUE_RANGES[kind]
    return st.slider(title, low, high, key=key, step=step, persist_state="session", **kw)


def add_item(feature: int, mode: str = "clamp", value: float | None = None, relative: bool | None = None,
             condition: Condition | None = None) -> None:
    """Add a feature to steer; seeds its widgets' state (callbacks run before widgets exist)."""
    uid = st.session_state["steer_uid"] = st.session_state.get("steer_uid", 0) + 1
    st.session_state.setdefault("steer_items", []).append({"uid": uid, "feature": int(feature)})
    st.session_state[f"mode_{uid}"] = mode
    if condition is not None:
        st.session_state[f"cond_{uid}"] = next(c for c, (kind, _) in CONDITIONS.items() if kind == condition.kind)
        st.session_state[f"cond_{uid}_{condition.kind}"] = (condition.pattern if condition.kind == "after_pattern"
                                                             else f"{condition.feature}>{condition.threshold:g}")
    st.session_state[f"rel_{uid}"] = True if relative is None else relative
    if value is not None:
        kind = "scale" if mode == "scale" else "rel" if relative else "abs"
        st.session_state[f"val_{uid}_{kind}"] = float(value)


def remove_item(uid: int) -> None:
    st.session_state["steer_items"] = [i for i in st.session_state["steer_items"] if i["uid"] != uid]


def settings_form() -> tuple[str, GenerationSettings]:
    st.session_state.setdefault("steer_prompt", DEFAULT_PROMPT)
    prompt = st.text_area("Prompt", key="steer_prompt", persist_state="session", height=90)
    cols = st.columns(5)
    for col, (name, key, step) in zip(cols, [("max_new_tokens", "steer_new", 1), ("temperature", "steer_temp", 0.05),
                                             ("top_p", "steer_top_p", 0.05)]):
        low, high, default = LIMITS[name]
        st.session_state.setdefault(key, type(step)(default))
        col.slider(name.replace("_", " "), type(step)(low), type(step)(high), key=key, step=step, persist_state="session")
    st.session_state.setdefault("steer_seed", 0)
    cols[3].number_input("seed", 0, int(LIMITS["seed"][1]), key="steer_seed", persist_state="session", step=1)
    cols[4].checkbox("chat template", key="steer_chat", persist_state="session", help="Wrap the prompt as a user message (instruct models)")
    s = st.session_state
    return prompt, GenerationSettings(max_new_tokens=int(s.steer_new), temperature=float(s.steer_temp),
                                      top_p=float(s.steer_top_p), seed=int(s.steer_seed), chat=bool(s.steer_chat))


def compare(ws, prompt: str, ivs, settings, stop: StopCondition | None = None) -> None:
    """Side by side: streamed while generating, the last result otherwise."""
    history = st.session_state.setdefault("steer_history", [])
    clicked = st.button("Generate", type="primary", key="generate", icon=":material/play_arrow:")
    notice = st.empty()  # a cut prompt, said before the completions stream in
    left, right = st.columns(2)
    left.markdown("**Unclamped**")
    right.markdown("**Steered:** " + md(", ".join(iv.describe() for iv in ivs) or "nothing"))
    boxes = (left.container(key="clean_out").empty(), right.container(key="steered_out").empty())
    if clicked and not ivs:
        st.error("No feature is steered. Fix: add at least one feature above.")
    elif clicked:
        with shown_as_message("generate the completions") as outcome:
            cut = completions.prompt_cut(ws, prompt, settings)
            completions.cut_notice(notice, cut)
            clean = completions.earlier_clean(ws, history, prompt, settings)
            boxes[1 if clean else 0].caption("waiting for the model…")
            result = completions.stream_pair(ws, prompt, ivs, settings, boxes, clean, stop)
        if outcome.failed:
            return
        n = history[0]["n"] + 1 if history else 1
        history.insert(0, {"n": n, "ws": ws_key(ws), "result": result, "cut": cut,
                           "labels": {iv.feature: label(ws, iv.feature) for iv in ivs}})
        del history[MAX_HISTORY:]
    if history:
        completions.cut_notice(notice, history[0]["cut"])
        last = history[0]["result"]
        boxes[0].text(last.clean.text)
        boxes[1].text(last.steered.text)
        completions.stopped_note(right, last.steered)
        completions.result_diff(ws, last)


@st.fragment
def sweep(ws, prompt: str, ivs, settings) -> None:
    st.subheader("Strength sweep")
    if not ivs:
        st.caption("Add a feature to sweep its strength.")
        return
    feature = st.selectbox("Feature", [iv.feature for iv in ivs], key="sweep_feature", persist_state="session", format_func=lambda f: feature_name(ws, f))
    relative = max_act(ws, feature) is not None
    unit = "× max activation" if relative else "activation units"
    text = st.text_input(f"Clamp values ({unit}), comma-separated", "-4, -2, 0, 2, 4, 8" if relative else "-100, -10, 0, 10, 100",
                         key="sweep_values", persist_state="session")
    values = sweep_values(text, "relative" if relative else "absolute")
    if values is None:
        return
    if st.button("Run sweep", key="run_sweep", icon=":material/grid_view:") and values:
        others = [iv for iv in ivs if iv.feature != feature]
        condition = next(iv.condition for iv in ivs if iv.feature == feature)  # the swept row keeps its condition
        rows = [others] + [others + [Intervention(feature, "clamp", v, relative, condition)] for v in values]
        with shown_as_message("run the sweep") as outcome:
            cut = completions.prompt_cut(ws, prompt, settings)
            with st.spinner(f"Generating {len(rows)} completions in one batch…"):
                done = generate_rows(ws.lm, ws.sae, prompt, rows, settings, ws.max_acts())
        if outcome.failed:
            return
        names = ["other features only" if others else "unsteered"] + [f"clamp #{feature} = {v:g}{'x' if relative else ''}" for v in values]
        st.session_state["sweep"] = list(zip(names, [c.text for c in done]))
        st.session_state["sweep_cut"] = cut
    if st.session_state.get("sweep"):
        completions.cut_notice(st, st.session_state.get("sweep_cut"))
    for start in range(0, len(st.session_state.get("sweep", [])), 3):
        for col, (name, text) in zip(st.columns(3), st.session_state["sweep"][start:start + 3]):
            with col.container(border=True):
                st.caption(md(name))
                st.text(text)


def sweep_values(text: str, kind: str) -> list[float] | None:
    """The comma-separated clamp values (at most 12), or None after saying what is wrong:
    the same range as the value boxes above."""
    low, high = VALUE_RANGES[kind]
    try:
        values = [float(v) for v in text.split(",") if v.strip()][:12]
    except ValueError:
        values = None
    if values is None or not all(low <= v <= high for v in values):  # also refuses nan
        st.error(f"Clamp values must be numbers from {low:g} to {high:g} separated by commas, e.g. -4, 0, 4.")
        return None
    return values


def history_panel(ws) -> None:
    history = st.session_state.get("steer_history", [])
    if not history:
        return
    st.subheader("Runs this session")
    for run in history:
        result = run["result"]
        title = f"Run {run['n']}: " + ", ".join(iv.describe() for iv in result.interventions)
        with st.expander(md(title), expanded=False):
            st.text(f"Prompt: {result.prompt}")
            completions.result_diff(ws, result)
            run_downloads(run)


@st.fragment
def run_downloads(run) -> None:
    """A run's exports, made on click: a page rerun does not rebuild them for every run in the history."""
    n = run["n"]
    with st.container(horizontal=True):
        st.download_button("JSON", functools.partial(run_json, run), file_name=f"steering_run_{n}.json",
                           mime="application/json", key=f"run_json_{n}", on_click="ignore")
        st.download_button("Markdown", functools.partial(run_markdown, run), file_name=f"steering_run_{n}.md",
                           mime="text/markdown", key=f"run_md_{n}", on_click="ignore")


def run_json(run) -> bytes:
    return export.dumps(export.steering_to_json(run["result"], labels=run["labels"])).encode()


def run_markdown(run) -> bytes:
    return export.steering_to_markdown(run["result"], labels=run["labels"]).encode()


run_page(steering_page)
