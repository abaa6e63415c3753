"""Streamlit helpers shared by the pages; the app's folder, not the installed library.

- `router`: the navigation, and the hand-over when Streamlit runs a page file alone.
- `workspace`: the loaded model, SAE and index, and the sidebar that shows and changes them.
- `cache`: cached reads shared by every session (a prompt's activations, cards, their exports).
- `features`: how a feature is named on screen (label, markdown-safe name, max activation).
- `links`: deep links (the URL's query parameters) and links to feature cards.
- `charts`: highlighted tokens, the heatmap and the error chart.
- `completions`: clean and steered completions streamed into the page, and their diff.
- `errors`: a failing library call shown as one line with its details, never a traceback.

Only this folder and pages/ import streamlit; `explorer` never does.
"""
